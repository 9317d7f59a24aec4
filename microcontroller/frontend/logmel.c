/* See logmel.h. */
#include "logmel.h"

#include <math.h>
#include <string.h>

#ifdef KM_USE_CMSIS_DSP
#include "arm_math.h"
/* KM_LOGMEL_FFT_SIZE (the build sets it from model_settings.h) picks CMSIS-DSP's size-specific
 * initialiser, which links only that size's tables (~16 KB for 2048); without it every size's are. */
#ifdef KM_LOGMEL_FFT_SIZE
#define KM_PASTE_(a, b, c) a##b##c
#define KM_PASTE(a, b, c) KM_PASTE_(a, b, c)
#define KM_RFFT_INIT(instance, n) \
  ((n) == KM_LOGMEL_FFT_SIZE ? KM_PASTE(arm_rfft_fast_init_, KM_LOGMEL_FFT_SIZE, _f32)(instance) : ARM_MATH_ARGUMENT_ERROR)
#else
#define KM_RFFT_INIT(instance, n) arm_rfft_fast_init_f32(instance, (uint16_t)(n))
#endif
#endif

#define KM_PI 3.14159265358979323846

int km_logmel_work_size(const km_logmel_config* config) {
  return 2 * config->fft_size + config->window_samples;
}

#ifndef KM_USE_CMSIS_DSP
/* In-place iterative radix-2 FFT of n complex values (re, im interleaved); twiddles: see logmel.h. */
static void fft_complex(float* data, int n, const float* twiddles) {
  int i, j = 0, len;
  for (i = 1; i < n; i++) { /* bit reversal */
    int bit = n >> 1;
    for (; j & bit; bit >>= 1) j ^= bit;
    j ^= bit;
    if (i < j) {
      float tr = data[2 * i], ti = data[2 * i + 1];
      data[2 * i] = data[2 * j];
      data[2 * i + 1] = data[2 * j + 1];
      data[2 * j] = tr;
      data[2 * j + 1] = ti;
    }
  }
  for (len = 2; len <= n; len <<= 1) {
    double angle = -2.0 * KM_PI / len;
    int half = len / 2, k;
    for (k = 0; k < half; k++) {
      const int t = k * (n / len); /* exp(-2 pi i k / len) = exp(-2 pi i t / n) */
      float wr, wi;
      if (twiddles) {
        wr = twiddles[2 * t];
        wi = twiddles[2 * t + 1];
      } else {
        wr = (float)cos(angle * k);
        wi = (float)sin(angle * k);
      }
      for (i = k; i < n; i += len) {
        float* a = data + 2 * i;
        float* b = data + 2 * (i + half);
        float br = b[0] * wr - b[1] * wi, bi = b[0] * wi + b[1] * wr;
        b[0] = a[0] - br;
        b[1] = a[1] - bi;
        a[0] += br;
        a[1] += bi;
      }
    }
  }
}
#endif

static int valid(const km_logmel_config* c) {
  return c && c->fft_size > 1 && (c->fft_size & (c->fft_size - 1)) == 0 && c->window_samples > 0 &&
         c->window_samples <= c->fft_size && c->hop_samples > 0 && c->mel_bands > 0 && c->mel_first_bin &&
         c->mel_bin_count && c->mel_weights;
}

int km_logmel_frame(const km_logmel_config* config, const float* frame, float* work, float* out) {
  const int n = config->fft_size;
  float* spectrum = work;           /* 2 * n floats */
  float* windowed = work + 2 * n;   /* window_samples floats */
  int i, m, offset = 0;
  if (!valid(config)) return -1;
  for (i = 0; i < config->window_samples; i++) {
    const float w = config->window ? config->window[i] : (float)(0.5 - 0.5 * cos(2.0 * KM_PI * i / config->window_samples));
    windowed[i] = frame[i] * w; /* periodic Hann */
  }
#ifdef KM_USE_CMSIS_DSP
  {
    arm_rfft_fast_instance_f32 fft;
    float* real_in = spectrum + n; /* second half of the buffer as input */
    memset(real_in, 0, sizeof(float) * n);
    memcpy(real_in, windowed, sizeof(float) * config->window_samples);
    if (KM_RFFT_INIT(&fft, n) != ARM_MATH_SUCCESS) return -1;
    arm_rfft_fast_f32(&fft, real_in, spectrum, 0); /* uses real_in as scratch */
    /* packed: [re0, re(n/2), re1, im1, ...] -> power in spectrum[0 .. n/2] */
    {
      float nyquist = spectrum[1] * spectrum[1];
      spectrum[0] = spectrum[0] * spectrum[0];
      for (i = 1; i < n / 2; i++) spectrum[i] = spectrum[2 * i] * spectrum[2 * i] + spectrum[2 * i + 1] * spectrum[2 * i + 1];
      spectrum[n / 2] = nyquist;
    }
  }
#else
  memset(spectrum, 0, sizeof(float) * 2 * n);
  for (i = 0; i < config->window_samples; i++) spectrum[2 * i] = windowed[i];
  fft_complex(spectrum, n, config->twiddles);
  for (i = 0; i <= n / 2; i++) spectrum[i] = spectrum[2 * i] * spectrum[2 * i] + spectrum[2 * i + 1] * spectrum[2 * i + 1];
#endif
  for (m = 0; m < config->mel_bands; m++) { /* single precision: the Cortex-M4F FPU has no doubles */
    float sum = 0.0f;
    const int first = config->mel_first_bin[m], count = config->mel_bin_count[m];
    for (i = 0; i < count; i++) sum += spectrum[first + i] * config->mel_weights[offset + i];
    offset += count;
    out[m] = logf(sum > config->log_floor ? sum : config->log_floor);
  }
  return 0;
}

void km_level_update(const km_logmel_config* config, km_level_state* state, float* values) {
  float mean = 0.0f, rate;
  int m;
  if (config->level_frames <= 0) return;
  for (m = 0; m < config->mel_bands; m++) mean += values[m];
  mean /= (float)config->mel_bands;
  state->count++;
  rate = state->count < config->level_frames ? 1.0f / (float)state->count : 1.0f / (float)config->level_frames;
  state->level += rate * (mean - state->level);
  for (m = 0; m < config->mel_bands; m++) values[m] -= state->level;
}

int km_logmel_frame_count(const km_logmel_config* config, int n_samples) {
  return 1 + n_samples / config->hop_samples;
}

int km_logmel_clip(const km_logmel_config* config, const float* samples, int n_samples, float* work, float* out) {
  const int pad = config->fft_size / 2;
  const int frames = km_logmel_frame_count(config, n_samples);
  float* frame = work + 2 * config->fft_size; /* reuses the window buffer as the frame */
  km_level_state level = {0.0f, 0};
  int f, i;
  if (!valid(config)) return -1;
  for (f = 0; f < frames; f++) {
    const int start = f * config->hop_samples - pad;
    for (i = 0; i < config->window_samples; i++) {
      const int s = start + i;
      frame[i] = (s >= 0 && s < n_samples) ? samples[s] : 0.0f;
    }
    if (km_logmel_frame(config, frame, work, out + (long)f * config->mel_bands) != 0) return -1;
    km_level_update(config, &level, out + (long)f * config->mel_bands);
  }
  return 0;
}
