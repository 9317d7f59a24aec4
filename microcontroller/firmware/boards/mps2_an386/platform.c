/* QEMU mps2-an386 (Cortex-M4F): CMSDK UART0 for the serial line, semihosting to exit. */
#include "platform.h"

#define UART0_BASE 0x40004000u
#define UART_DATA (*(volatile uint32_t*)(UART0_BASE + 0x00))
#define UART_STATE (*(volatile uint32_t*)(UART0_BASE + 0x04))
#define UART_CTRL (*(volatile uint32_t*)(UART0_BASE + 0x08))
#define UART_BAUDDIV (*(volatile uint32_t*)(UART0_BASE + 0x10))
#define UART_STATE_TX_FULL 1u
#define UART_CTRL_TX_ENABLE 1u

#define DWT_CTRL (*(volatile uint32_t*)0xE0001000u)
#define DWT_CYCCNT (*(volatile uint32_t*)0xE0001004u)
#define DEMCR (*(volatile uint32_t*)0xE000EDFCu)

void km_platform_init(void) {
  UART_BAUDDIV = 16;
  UART_CTRL = UART_CTRL_TX_ENABLE;
  DEMCR |= 1u << 24; /* trace enable, for the cycle counter where there is one */
  DWT_CYCCNT = 0;
  DWT_CTRL |= 1u;
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

uint32_t km_platform_cycles(void) { return DWT_CYCCNT; }

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
