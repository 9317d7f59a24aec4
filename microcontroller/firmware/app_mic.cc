// Firmware for a board with a microphone: listens continuously, prints what it hears, and every
// 10 s how much of each second of audio the front end and the models took.
#include <stdio.h>

#include "listener.h"
#include "mic.h"
#include "platform.h"

#ifndef KM_CPU_HZ
#define KM_CPU_HZ 64000000u
#endif

int main() {
  km_platform_init();
  km_platform_write_line("keras-mtl listener: microphone, 16 kHz");
  if (!keras_mtl::ListenerStart(km_platform_write_line)) return 1;
  if (km_mic_start() != 0) {
    km_platform_write_line("error: this board has no microphone driver");
    return 1;
  }
  char line[160];
  uint32_t blocks = 0, reported_overruns = 0;
  keras_mtl::ListenerStats last = keras_mtl::ListenerStatistics();
  for (;;) {
    const int16_t* block = km_mic_block();
    if (block == nullptr) {
      __asm__ volatile("wfi");
      continue;
    }
    keras_mtl::ListenerPush(block, KM_MIC_BLOCK_SAMPLES);
    km_mic_release();
    if (++blocks % 100 == 0) {  // every 10 s of audio
      const keras_mtl::ListenerStats now = keras_mtl::ListenerStatistics();
      const uint32_t per_ms = KM_CPU_HZ / 1000u;
      snprintf(line, sizeof(line), "load per second of audio: front end %lu ms, models %lu ms; dropped blocks %lu",
               (unsigned long)((now.frontend_cycles - last.frontend_cycles) / per_ms / 10),
               (unsigned long)((now.model_cycles - last.model_cycles) / per_ms / 10),
               (unsigned long)(km_mic_overruns() - reported_overruns));
      km_platform_write_line(line);
      reported_overruns = km_mic_overruns();
      last = now;
    }
  }
}
