/* What the listener needs from a board: a serial line, a cycle counter, a way to stop. */
#ifndef KERAS_MTL_PLATFORM_H_
#define KERAS_MTL_PLATFORM_H_

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

void km_platform_init(void);
/* Writes text to the serial line (blocking). */
void km_platform_write(const char* text);
/* One line: the text and a newline (the listener's report function). */
static inline void km_platform_write_line(const char* text) {
  km_platform_write(text);
  km_platform_write("\n");
}
/* Free-running CPU cycle counter; 0 where the core has none (QEMU). */
uint32_t km_platform_cycles(void);
/* Ends the program (QEMU: exits the emulator with this status; boards: halts). */
void km_platform_exit(int status) __attribute__((noreturn));

#ifdef __cplusplus
}
#endif

#endif /* KERAS_MTL_PLATFORM_H_ */
