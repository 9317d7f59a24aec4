/* A minimal RIFF/WAVE reader for 16-bit PCM mono: finds the "fmt " and "data" chunks. */
#ifndef KERAS_MTL_WAV_H_
#define KERAS_MTL_WAV_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
  const int16_t* samples; /* little-endian PCM, as stored (Cortex-M is little-endian) */
  size_t count;
  uint32_t sample_rate;
} km_wav;

/* Returns NULL on success, or what is wrong with the file. */
const char* km_wav_parse(const unsigned char* data, size_t size, km_wav* out);

#ifdef __cplusplus
}
#endif

#endif /* KERAS_MTL_WAV_H_ */
