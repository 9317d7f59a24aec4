/* Microphone capture for boards with one: 16 kHz mono 16-bit blocks, filled by DMA in the
 * background and handed to the application in order. */
#ifndef KERAS_MTL_MIC_H_
#define KERAS_MTL_MIC_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define KM_MIC_BLOCK_SAMPLES 1600 /* 100 ms */

/* Powers and starts the microphone; returns 0, or -1 if the board has none. */
int km_mic_start(void);
/* The oldest filled block not yet released, or NULL if none is ready. */
const int16_t* km_mic_block(void);
/* Gives the block returned by km_mic_block back to the capture. */
void km_mic_release(void);
/* Blocks dropped because the application did not keep up. */
uint32_t km_mic_overruns(void);

#ifdef __cplusplus
}
#endif

#endif /* KERAS_MTL_MIC_H_ */
