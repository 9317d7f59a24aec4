// Firmware for a recording compiled in (QEMU mps2-an386): runs the listener over it as if it
// arrived from a microphone, 100 ms at a time, prints what it hears and exits.
#include <stdio.h>

#include "listener.h"
#include "platform.h"
#include "wav.h"

extern "C" const unsigned char g_input_wav[];
extern "C" const unsigned int g_input_wav_size;
extern "C" const char g_input_wav_name[];

int main() {
  km_platform_init();
  char line[160];
  km_wav wav;
  const char* problem = km_wav_parse(g_input_wav, g_input_wav_size, &wav);
  if (problem != nullptr) {
    snprintf(line, sizeof(line), "error: %s: %s", g_input_wav_name, problem);
    km_platform_write_line(line);
    return 2;
  }
  if (wav.sample_rate != 16000) {
    snprintf(line, sizeof(line), "error: %s: %lu Hz; the models take 16000 Hz", g_input_wav_name,
             (unsigned long)wav.sample_rate);
    km_platform_write_line(line);
    return 2;
  }
  snprintf(line, sizeof(line), "keras-mtl listener: %s, %lu samples", g_input_wav_name, (unsigned long)wav.count);
  km_platform_write_line(line);
  if (!keras_mtl::ListenerStart(km_platform_write_line)) return 1;
  const size_t chunk = 1600;
  for (size_t at = 0; at < wav.count; at += chunk)
    keras_mtl::ListenerPush(wav.samples + at, wav.count - at < chunk ? wav.count - at : chunk);
  keras_mtl::ListenerFlush();
  const keras_mtl::ListenerStats stats = keras_mtl::ListenerStatistics();
  snprintf(line, sizeof(line), "end: %lu samples, %lu frames, %lu encoder windows, %lu invocations, arena %lu bytes",
           (unsigned long)stats.samples, (unsigned long)stats.frames, (unsigned long)stats.windows,
           (unsigned long)stats.invocations, (unsigned long)stats.arena_bytes);
  km_platform_write_line(line);
  if (stats.model_cycles != 0 && stats.samples != 0) {
    // SysTick ticks, 40 instructions each under `qemu-system-arm -icount shift=0` (boards/mps2_an386)
    const uint64_t per_tick = 40, rate = 16000;
    auto per_second = [&](uint64_t ticks) {
      return (unsigned long)(ticks * per_tick * rate / stats.samples);
    };
    snprintf(line, sizeof(line), "instructions per second of audio: front end %lu", per_second(stats.frontend_cycles));
    km_platform_write_line(line);
    for (int i = 0; i < keras_mtl::ListenerPieceCount(); i++) {
      const char* name = nullptr;
      const uint64_t ticks = keras_mtl::ListenerPieceCycles(i, &name);
      snprintf(line, sizeof(line), "instructions per second of audio: %s %lu", name, per_second(ticks));
      km_platform_write_line(line);
      for (int op = 0; op < keras_mtl::ListenerOperatorCount(i); op++) {
        const char* tag = nullptr;
        const uint64_t op_ticks = keras_mtl::ListenerOperatorCycles(i, op, &tag);
        snprintf(line, sizeof(line), "instructions per second of audio: %s operator %d %s %lu", name, op, tag,
                 per_second(op_ticks));
        km_platform_write_line(line);
      }
    }
    snprintf(line, sizeof(line), "instructions per second of audio: all %lu",
             per_second(stats.model_cycles + stats.frontend_cycles));
    km_platform_write_line(line);
  }
  return 0;
}
