/* Log-mel front end of keras-mtl in C: the same features as keras_mtl.features.LogMel.
 *
 *   frame i (centred at sample i * hop): window_samples samples of the signal zero-padded by
 *   fft_size / 2 on both sides, times a periodic Hann window, zero-padded to fft_size;
 *   power spectrum |X_k|^2, k = 0 .. fft_size / 2; mel band m = sum_k power_k * W[k, m]
 *   (sparse triangular filters from model_settings.h); output log(max(mel, log_floor)).
 *
 * With KM_USE_CMSIS_DSP defined the FFT is CMSIS-DSP's arm_rfft_fast_f32 (the Cortex-M build takes
 * it from the cmsisdsp PyPI sdist; the twiddles table is then unused); otherwise a portable radix-2
 * complex FFT (about 4x the instructions), for host builds. Both are tested on the host against the
 * Python front end. With level_frames > 0 the frames are then level-normalised (km_level_update).
 */
#ifndef KERAS_MTL_LOGMEL_H_
#define KERAS_MTL_LOGMEL_H_

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
  int window_samples;
  int hop_samples;
  int fft_size; /* a power of two, >= window_samples */
  int mel_bands;
  float log_floor;
  const short* mel_first_bin; /* [mel_bands] */
  const short* mel_bin_count; /* [mel_bands] */
  const float* mel_weights;   /* concatenated per band */
  /* Optional tables (NULL: computed on the fly, which costs double-precision trigonometry every
   * frame; model_settings.h has both): periodic Hann window [window_samples], and the FFT twiddles
   * cos, sin of -2*pi*k/fft_size interleaved [fft_size] (k < fft_size / 2). */
  const float* window;
  const float* twiddles;
  /* Running level normalisation (FrontEndConfig.level_seconds; KM_LEVEL_FRAMES in model_settings.h):
   * its time constant in frames, 0 for none. */
  int level_frames;
} km_logmel_config;

/* The running level of a stream: the mean over the mel bands of each frame, averaged over the frames
 * since the stream began (until level_frames frames), then exponentially with time constant
 * level_frames frames (keras_mtl.features.logmel.running_level). Zero it at the stream's start. */
typedef struct {
  float level;
  int count; /* frames seen */
} km_level_state;

/* Subtracts the stream's running level (updated with this frame) from one frame's mel_bands values,
 * in place; nothing when config->level_frames is 0. */
void km_level_update(const km_logmel_config* config, km_level_state* state, float* values);

/* Floats of work memory km_logmel_frame needs: 2 * fft_size + window_samples. */
int km_logmel_work_size(const km_logmel_config* config);

/* One frame: ``frame`` holds window_samples samples (already centred); writes mel_bands values.
 * Returns 0, or -1 if the configuration is invalid. */
int km_logmel_frame(const km_logmel_config* config, const float* frame, float* work, float* out);

/* Number of frames of a clip of n_samples samples (centred frames): 1 + n_samples / hop. */
int km_logmel_frame_count(const km_logmel_config* config, int n_samples);

/* A whole clip, as in training: out holds frame_count * mel_bands values (frame-major); level-normalised
 * from the clip's first frame when level_frames > 0. */
int km_logmel_clip(const km_logmel_config* config, const float* samples, int n_samples, float* work, float* out);

#ifdef __cplusplus
}
#endif

#endif /* KERAS_MTL_LOGMEL_H_ */
