// The keras-mtl listener: 16 kHz audio in, scene labels, sound events and voice activity out.
//
// It runs what scripts/export.py generated (model_settings.h, km_pieces.h and the model arrays)
// exactly as the host-side int8 pipeline does (keras_mtl/export.py, StreamingRunner):
//   log-mel frame every KM_HOP_SAMPLES samples (frontend/logmel.c) -> encoder step every
//   KM_ENCODER_WINDOW_FRAMES frames with its per-layer states fed back (or, for an encoder that
//   cannot step, a window of KM_ENCODER_WINDOW_FRAMES frames every KM_ENCODER_HOP_FRAMES) ->
//   embeddings -> clip heads every second over the last <windows> seconds of embeddings, frame steps
//   once per embedding with their GRU state fed back -> median filter + threshold -> onsets and offsets.
// Between models, int8 values are dequantised with the producer's parameters and requantised with
// the consumer's, as on the host. Reports go to a callback, one line each.
#ifndef KERAS_MTL_LISTENER_H_
#define KERAS_MTL_LISTENER_H_

#include <stddef.h>
#include <stdint.h>

namespace keras_mtl {

using ReportFunction = void (*)(const char* line);

// Starts the interpreters; returns false (after reporting why) when a model does not fit.
bool ListenerStart(ReportFunction report);

// Feeds mono 16 kHz samples; runs every model whose input became complete.
void ListenerPush(const int16_t* samples, size_t count);

// End of a recording: pads like the host pipeline (zeros after the audio, the pad frame after the
// last log-mel frame), runs the remaining windows and closes open events at the recording's end.
void ListenerFlush();

// Counters for a summary line.
struct ListenerStats {
  uint32_t samples;
  uint32_t frames;
  uint32_t windows;
  uint32_t invocations;
  uint64_t model_cycles;  // cycles spent in Invoke (0 where the platform has no cycle counter)
  uint64_t frontend_cycles;
  size_t arena_bytes;
};
ListenerStats ListenerStatistics();

// The exported models, and the cycles spent in one's Invoke (index < ListenerPieceCount()) with its name.
int ListenerPieceCount();
uint64_t ListenerPieceCycles(int index, const char** name);

// Built with KM_PROFILE_OPERATORS: a piece's operators in order (0 otherwise), and the cycles spent
// in operator ``index`` with its operator name (CONV_2D, ...).
int ListenerOperatorCount(int piece);
uint64_t ListenerOperatorCycles(int piece, int index, const char** tag);

}  // namespace keras_mtl

#endif  // KERAS_MTL_LISTENER_H_
