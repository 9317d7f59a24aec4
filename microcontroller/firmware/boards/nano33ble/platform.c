/* Arduino Nano 33 BLE Sense (nRF52840, Cortex-M4F, 64 MHz): serial out on the TX pin (D1 = P1.03,
 * 115200 8N1, UARTE0), the on-board PDM microphone (power P0.17, clock P0.26, data P0.25) at
 * exactly 16 kHz (1.280 MHz PDM clock, ratio 80), DWT cycle counter. Register-level, no SDK.
 * Written from the nRF52840 product specification; not run on hardware by the project's CI. */
#include <string.h>

#include "mic.h"
#include "platform.h"

#define REG(base, offset) (*(volatile uint32_t*)((base) + (offset)))

#define CLOCK 0x40000000u
#define UARTE0 0x40002000u
#define PDM 0x4001D000u
#define P0 0x50000000u
#define NVIC_ISER0 (*(volatile uint32_t*)0xE000E100u)
#define DWT_CTRL (*(volatile uint32_t*)0xE0001000u)
#define DWT_CYCCNT (*(volatile uint32_t*)0xE0001004u)
#define DEMCR (*(volatile uint32_t*)0xE000EDFCu)

#define PSEL(port, pin) ((uint32_t)(pin) | ((uint32_t)(port) << 5))
#define PDM_IRQ 29

static char tx_buffer[64]; /* EasyDMA reads RAM only */

void km_platform_init(void) {
  REG(CLOCK, 0x000) = 1; /* TASKS_HFCLKSTART: the crystal, for an exact PDM clock and baud rate */
  while (REG(CLOCK, 0x100) == 0) {
  }
  REG(CLOCK, 0x100) = 0;
  REG(UARTE0, 0x50C) = PSEL(1, 3);     /* PSEL.TXD = P1.03 (D1) */
  REG(UARTE0, 0x514) = 0xFFFFFFFFu;    /* PSEL.RXD disconnected */
  REG(UARTE0, 0x524) = 0x01D7E000u;    /* BAUDRATE 115200 */
  REG(UARTE0, 0x56C) = 0;              /* CONFIG: 8N1, no flow control */
  REG(UARTE0, 0x500) = 8;              /* ENABLE: UARTE */
  DEMCR |= 1u << 24;
  DWT_CYCCNT = 0;
  DWT_CTRL |= 1u;
}

static void send(const char* data, uint32_t length) {
  memcpy(tx_buffer, data, length);
  REG(UARTE0, 0x120) = 0;              /* EVENTS_ENDTX */
  REG(UARTE0, 0x544) = (uint32_t)tx_buffer;
  REG(UARTE0, 0x548) = length;         /* TXD.MAXCNT */
  REG(UARTE0, 0x008) = 1;              /* TASKS_STARTTX */
  while (REG(UARTE0, 0x120) == 0) {
  }
  REG(UARTE0, 0x00C) = 1;              /* TASKS_STOPTX */
}

void km_platform_write(const char* text) {
  char chunk[sizeof(tx_buffer)];
  uint32_t used = 0;
  for (; *text; text++) {
    if (*text == '\n') chunk[used++] = '\r';
    chunk[used++] = *text;
    if (used >= sizeof(chunk) - 1) {
      send(chunk, used);
      used = 0;
    }
  }
  if (used) send(chunk, used);
}

uint32_t km_platform_cycles(void) { return DWT_CYCCNT; }

void km_platform_exit(int status) {
  (void)status;
  for (;;) __asm__ volatile("wfi");
}

/* -- microphone: DMA into a ring of blocks, the interrupt hands the next free one to the PDM ----- */
#define RING 8
static int16_t blocks[RING][KM_MIC_BLOCK_SAMPLES];
static volatile uint32_t filling;  /* block the PDM writes now */
static volatile uint32_t written;  /* blocks completed */
static volatile uint32_t consumed; /* blocks released by the application */
static volatile uint32_t overruns;

int km_mic_start(void) {
  REG(P0, 0x700 + 4 * 17) = 1u | (3u << 8); /* PIN_CNF[17]: output, high drive: microphone power */
  REG(P0, 0x508) = 1u << 17;                /* OUTSET */
  REG(PDM, 0x540) = PSEL(0, 26);            /* PSEL.CLK */
  REG(PDM, 0x544) = PSEL(0, 25);            /* PSEL.DIN */
  REG(PDM, 0x504) = 0x0A000000u;            /* PDMCLKCTRL: 1.280 MHz */
  REG(PDM, 0x520) = 1;                      /* RATIO: 80 -> 16 kHz */
  REG(PDM, 0x508) = 1;                      /* MODE: mono, left on the falling edge */
  REG(PDM, 0x518) = 0x28;                   /* GAINL: 0 dB */
  REG(PDM, 0x51C) = 0x28;
  REG(PDM, 0x560) = (uint32_t)blocks[0];    /* SAMPLE.PTR */
  REG(PDM, 0x564) = KM_MIC_BLOCK_SAMPLES;   /* SAMPLE.MAXCNT */
  filling = 0;
  REG(PDM, 0x300) = 1u;                     /* INTEN: STARTED */
  NVIC_ISER0 = 1u << PDM_IRQ;
  REG(PDM, 0x500) = 1;                      /* ENABLE */
  REG(PDM, 0x000) = 1;                      /* TASKS_START */
  return 0;
}

/* STARTED: the PDM latched SAMPLE.PTR and fills that block; the block before it is complete. */
void km_platform_irq(int irq) {
  if (irq != PDM_IRQ) return;
  REG(PDM, 0x100) = 0;
  if (REG(PDM, 0x560) != (uint32_t)blocks[filling % RING]) return;
  if (filling > 0) written = filling;  /* blocks [0, filling) are full */
  uint32_t next = filling + 1;
  if (next - consumed >= RING) {        /* the application is behind: reuse the oldest block */
    overruns++;
    consumed++;
  }
  filling = next;
  REG(PDM, 0x560) = (uint32_t)blocks[next % RING];
}

const int16_t* km_mic_block(void) { return consumed < written ? blocks[consumed % RING] : 0; }

void km_mic_release(void) {
  __asm__ volatile("cpsid i" ::: "memory"); /* the interrupt may drop the oldest block meanwhile */
  if (consumed < written) consumed++;
  __asm__ volatile("cpsie i" ::: "memory");
}

uint32_t km_mic_overruns(void) { return overruns; }
