/* See wav.h. */
#include "wav.h"

#include <string.h>

static uint32_t le32(const unsigned char* p) { return p[0] | (p[1] << 8) | (p[2] << 16) | ((uint32_t)p[3] << 24); }
static uint16_t le16(const unsigned char* p) { return (uint16_t)(p[0] | (p[1] << 8)); }

const char* km_wav_parse(const unsigned char* data, size_t size, km_wav* out) {
  size_t at = 12;
  int have_format = 0;
  if (size < 12 || memcmp(data, "RIFF", 4) != 0 || memcmp(data + 8, "WAVE", 4) != 0) return "not a RIFF/WAVE file";
  while (at + 8 <= size) {
    const uint32_t length = le32(data + at + 4);
    const unsigned char* body = data + at + 8;
    if (length > size - at - 8) return "a chunk runs past the end of the file";
    if (memcmp(data + at, "fmt ", 4) == 0) {
      if (length < 16) return "fmt chunk too short";
      if (le16(body) != 1) return "not PCM (format tag is not 1)";
      if (le16(body + 2) != 1) return "not mono";
      if (le16(body + 14) != 16) return "not 16-bit samples";
      out->sample_rate = le32(body + 4);
      have_format = 1;
    } else if (memcmp(data + at, "data", 4) == 0) {
      if (!have_format) return "data chunk before the fmt chunk";
      if (((uintptr_t)body & 1u) != 0) return "sample data is not 2-byte aligned";
      out->samples = (const int16_t*)(const void*)body;
      out->count = length / 2;
      return NULL;
    }
    at += 8 + length + (length & 1u);
  }
  return "no data chunk";
}
