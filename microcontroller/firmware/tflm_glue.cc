// What TFLite-Micro expects from the target: a log sink and a clock.
#include <stdint.h>

#include "platform.h"

extern "C" void DebugLog(const char* text) { km_platform_write(text); }

namespace tflite {
uint32_t ticks_per_second() { return 0; }  // no wall clock here; Invoke cycles are counted by the listener
uint32_t GetCurrentTimeTicks() { return 0; }
}  // namespace tflite
