/* Reset and fault handlers and the vector table for Cortex-M boards, with the symbols of
 * cortex_m.ld: copies .data, clears .bss, enables the FPU, runs constructors, then main. */
#include <stdint.h>

#include "platform.h"

extern uint32_t _sidata, _sdata, _edata, _sbss, _ebss, _estack;
extern int main(void);
extern void __libc_init_array(void);

void km_platform_irq(int irq) __attribute__((weak));

extern void (*const km_vectors[])(void);

void Reset_Handler(void) {
  uint32_t *src = &_sidata, *dst = &_sdata;
  *(volatile uint32_t*)0xE000ED08u = (uint32_t)km_vectors; /* VTOR: ours, also behind a bootloader */
  while (dst < &_edata) *dst++ = *src++;
  for (dst = &_sbss; dst < &_ebss;) *dst++ = 0;
#if defined(__ARM_FP)
  *(volatile uint32_t*)0xE000ED88u |= 0xFu << 20; /* CPACR: full access to CP10 and CP11 */
  __asm__ volatile("dsb\n\tisb");
#endif
  __libc_init_array();
  km_platform_exit(main());
}

static void Fault_Handler(void) {
  km_platform_write("\nfatal: processor fault\n");
  km_platform_exit(3);
}

/* Peripheral interrupts go to the board's km_platform_irq(irq number); none is enabled by default. */
static void Irq_Handler(void) {
  uint32_t exception;
  __asm__ volatile("mrs %0, ipsr" : "=r"(exception));
  if (km_platform_irq) {
    km_platform_irq((int)exception - 16);
  } else {
    Fault_Handler();
  }
}

#define KM_IRQ_COUNT 64
#define IRQ Irq_Handler
#define IRQ8 IRQ, IRQ, IRQ, IRQ, IRQ, IRQ, IRQ, IRQ
__attribute__((section(".isr_vector"), used)) void (*const km_vectors[16 + KM_IRQ_COUNT])(void) = {
    (void (*)(void))&_estack, Reset_Handler, Fault_Handler, Fault_Handler, Fault_Handler, Fault_Handler,
    Fault_Handler,            0,             0,             0,             0,             Fault_Handler,
    Fault_Handler,            0,             Fault_Handler, Fault_Handler,
    IRQ8, IRQ8, IRQ8, IRQ8, IRQ8, IRQ8, IRQ8, IRQ8};

/* newlib: the heap ends below the stack reserve; writes go to the serial line */
extern uint32_t _heap_start, _heap_end;
void* _sbrk(int increment) {
  static char* brk = (char*)&_heap_start;
  char* previous = brk;
  if (brk + increment > (char*)&_heap_end) return (void*)-1;
  brk += increment;
  return previous;
}
