/* QEMU mps2-an386 (Cortex-M4F): CMSDK UART0 for the serial line, semihosting to exit, and SysTick as
 * the cycle counter (QEMU has no DWT). Under `qemu-system-arm -icount shift=0` every instruction
 * advances the virtual clock by 1 ns and SysTick counts the board's 25 MHz clock, so one tick is 40
 * instructions (KM_PLATFORM_INSTRUCTIONS_PER_TICK); without -icount the ticks follow the host's time. */
#include "platform.h"

#define UART0_BASE 0x40004000u
#define UART_DATA (*(volatile uint32_t*)(UART0_BASE + 0x00))
#define UART_STATE (*(volatile uint32_t*)(UART0_BASE + 0x04))
#define UART_CTRL (*(volatile uint32_t*)(UART0_BASE + 0x08))
#define UART_BAUDDIV (*(volatile uint32_t*)(UART0_BASE + 0x10))
#define UART_STATE_TX_FULL 1u
#define UART_CTRL_TX_ENABLE 1u

#define SYST_CSR (*(volatile uint32_t*)0xE000E010u)
#define SYST_RVR (*(volatile uint32_t*)0xE000E014u)
#define SYST_CVR (*(volatile uint32_t*)0xE000E018u)
#define SYST_CSR_ENABLE_CPU_CLOCK 5u /* ENABLE | CLKSOURCE (processor clock), no interrupt */
#define SYST_MASK 0xFFFFFFu            /* a 24-bit down counter */

static uint32_t g_last_tick, g_ticks;

void km_platform_init(void) {
  UART_BAUDDIV = 16;
  UART_CTRL = UART_CTRL_TX_ENABLE;
  SYST_RVR = SYST_MASK;
  SYST_CVR = 0;
  SYST_CSR = SYST_CSR_ENABLE_CPU_CLOCK;
  g_last_tick = SYST_CVR;
}

void km_platform_write(const char* text) {
  for (; *text; text++) {
    if (*text == '\n') {
      while (UART_STATE & UART_STATE_TX_FULL) {
      }
      UART_DATA = '\r';
    }
    while (UART_STATE & UART_STATE_TX_FULL) {
    }
    UART_DATA = (uint32_t)(unsigned char)*text;
  }
}

/* SysTick ticks since km_platform_init, extended to 32 bits: called at least once per log-mel frame,
 * far more often than the counter wraps (2^24 ticks, 0.67 s of emulated time). */
uint32_t km_platform_cycles(void) {
  const uint32_t now = SYST_CVR;
  g_ticks += (g_last_tick - now) & SYST_MASK;
  g_last_tick = now;
  return g_ticks;
}

void km_platform_exit(int status) {
  /* semihosting SYS_EXIT_EXTENDED: ADP_Stopped_ApplicationExit with the status (qemu -semihosting) */
  static volatile uint32_t block[2];
  block[0] = 0x20026u;
  block[1] = (uint32_t)status;
  register uint32_t r0 __asm__("r0") = 0x20u;
  register volatile uint32_t* r1 __asm__("r1") = block;
  __asm__ volatile("bkpt 0xab" : : "r"(r0), "r"(r1) : "memory");
  for (;;) {
  }
}
