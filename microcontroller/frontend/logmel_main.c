/* Host tool: log-mel of a raw float32 mono file with the tables of a generated model_settings.h.
 *   cc -O2 -I<export>/c logmel.c logmel_main.c -lm -o logmel && ./logmel in.f32 out.f32 [--no-tables]
 * Writes frame_count * KM_MEL_BANDS float32 values (frame-major). --no-tables computes the window and
 * twiddles on the fly instead of reading them from model_settings.h. */
#include <string.h>
#include <stdio.h>
#include <stdlib.h>

#include "logmel.h"
#include "model_settings.h"

int main(int argc, char** argv) {
  km_logmel_config config = {KM_WINDOW_SAMPLES, KM_HOP_SAMPLES, KM_FFT_SIZE, KM_MEL_BANDS, KM_LOG_FLOOR,
                             kMelFirstBin, kMelBinCount, kMelWeights, kHannWindow, kFftTwiddles, KM_LEVEL_FRAMES};
  FILE* in;
  FILE* out;
  long bytes;
  int n, frames;
  float *samples, *features, *work;
  if (argc == 4 && strcmp(argv[3], "--no-tables") == 0) {
    config.window = NULL;
    config.twiddles = NULL;
  } else if (argc != 3) {
    fprintf(stderr, "usage: %s IN.f32 OUT.f32 [--no-tables]\n", argv[0]);
    return 2;
  }
  in = fopen(argv[1], "rb");
  if (!in) {
    fprintf(stderr, "error: %s: cannot open\n", argv[1]);
    return 2;
  }
  fseek(in, 0, SEEK_END);
  bytes = ftell(in);
  fseek(in, 0, SEEK_SET);
  n = (int)(bytes / (long)sizeof(float));
  samples = (float*)malloc(sizeof(float) * (n > 0 ? n : 1));
  if (fread(samples, sizeof(float), n, in) != (size_t)n) {
    fprintf(stderr, "error: %s: short read\n", argv[1]);
    return 2;
  }
  fclose(in);
  frames = km_logmel_frame_count(&config, n);
  features = (float*)malloc(sizeof(float) * frames * KM_MEL_BANDS);
  work = (float*)malloc(sizeof(float) * km_logmel_work_size(&config));
  if (km_logmel_clip(&config, samples, n, work, features) != 0) {
    fprintf(stderr, "error: invalid front-end configuration\n");
    return 2;
  }
  out = fopen(argv[2], "wb");
  if (!out || fwrite(features, sizeof(float), (size_t)frames * KM_MEL_BANDS, out) != (size_t)frames * KM_MEL_BANDS) {
    fprintf(stderr, "error: %s: cannot write\n", argv[2]);
    return 2;
  }
  fclose(out);
  free(samples);
  free(features);
  free(work);
  return 0;
}
