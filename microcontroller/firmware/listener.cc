// See listener.h.
#include "listener.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <new>

#include "km_pieces.h"
#include "logmel.h"
#include "platform.h"
#include "tensorflow/lite/micro/micro_interpreter.h"
#include "tensorflow/lite/micro/micro_mutable_op_resolver.h"
#include "tensorflow/lite/schema/schema_generated.h"

namespace keras_mtl {
namespace {

constexpr int kMaxClasses = 64;
constexpr int kMaxMedian = 31;
constexpr size_t kMaxState = 512;  // bytes of a frame step's recurrent state (int8, or int16 in a 16x8 step)
constexpr int kPad = KM_FFT_SIZE / 2;  // centred frames: frame i is centred on sample i * hop

// -- front end -------------------------------------------------------------------------------------
#ifdef KM_USE_CMSIS_DSP
#define KM_TWIDDLES nullptr  // CMSIS-DSP has its own tables
#else
#define KM_TWIDDLES kFftTwiddles
#endif
const km_logmel_config kLogMel = {KM_WINDOW_SAMPLES, KM_HOP_SAMPLES, KM_FFT_SIZE, KM_MEL_BANDS, KM_LOG_FLOOR,
                                  kMelFirstBin,      kMelBinCount,   kMelWeights, kHannWindow, KM_TWIDDLES,
                                  KM_LEVEL_FRAMES};
km_level_state g_level = {0.0f, 0};        // the stream's running level (level normalisation)
float g_samples[KM_WINDOW_SAMPLES];         // the current frame's samples, oldest first
float g_work[2 * KM_FFT_SIZE + KM_WINDOW_SAMPLES];
float g_mel[KM_MEL_BANDS];
int8_t g_window[KM_ENCODER_WINDOW_FRAMES][KM_MEL_BANDS];  // encoder input (window or step), quantised
int g_window_rows = 0;                      // rows of g_window filled
#if KM_ENCODER_STEPPED
int8_t g_states[KM_ENCODER_STATE_BYTES + 1];  // the stepped encoder's states, in its input quantisation
uint32_t g_steps = 0;                          // encoder steps since the stream began (saturates)
uint32_t g_wanted = 0xFFFFFFFFu;              // embeddings per output to deliver (set by the flush)
#endif
int g_filled = 0;                           // samples in g_samples (starts with kPad zeros)

// -- models ----------------------------------------------------------------------------------------
tflite::MicroMutableOpResolver<KM_OPERATOR_COUNT> g_resolver;
alignas(16) uint8_t g_arena_encoder[KM_ENCODER_ARENA_SIZE];

struct Model {
  const km_piece* piece;
  tflite::MicroInterpreter* interpreter;
  uint8_t* arena;
  // clip heads: embeddings of the last `windows` windows, already in the head's input quantisation
  int8_t* history;
  int windows_seen;
  // stepped encoder: embeddings of the window being filled (clip heads), embeddings received
  int8_t* pending;
  int pending_count;
  uint32_t received;
  // frame steps: median filter ring of decisions, events
  uint8_t decisions[kMaxMedian][kMaxClasses];
  uint8_t first[kMaxClasses];
  uint32_t steps;          // decisions made
  uint32_t filtered;       // filtered frames emitted
  uint8_t active[kMaxClasses];
  bool started;
  uint64_t cycles;  // spent in Invoke
};

Model g_models[KM_PIECE_COUNT];
Model* g_encoder = nullptr;
ReportFunction g_report = nullptr;
ListenerStats g_stats = {};
bool g_flushing = false;
uint32_t g_duration_ms = 0;

void Report(const char* format, ...) __attribute__((format(printf, 1, 2)));
void Report(const char* format, ...) {
  char line[160];
  va_list args;
  va_start(args, format);
  vsnprintf(line, sizeof(line), format, args);
  va_end(args);
  g_report(line);
}

int8_t Quantize(float value, const TfLiteTensor* tensor) {
  // as numpy on the host: round half to even of value / scale (float32), plus the zero point
  const float scaled = value / tensor->params.scale;
  long q = lrintf(scaled) + tensor->params.zero_point;
  return static_cast<int8_t>(q < -128 ? -128 : (q > 127 ? 127 : q));
}

float Dequantize(int8_t value, const TfLiteTensor* tensor) {
  return static_cast<float>(static_cast<int>(value) - tensor->params.zero_point) * tensor->params.scale;
}

// int16 tensors (a 16x8 frame step: int8 weights, int16 activations; symmetric, zero point 0)
int16_t Quantize16(float value, const TfLiteTensor* tensor) {
  const float scaled = value / tensor->params.scale;
  long q = lrintf(scaled) + tensor->params.zero_point;
  return static_cast<int16_t>(q < -32768 ? -32768 : (q > 32767 ? 32767 : q));
}

// element i of an int8 or int16 tensor, as a float
float DequantizeAt(const TfLiteTensor* tensor, int i) {
  const int value = tensor->type == kTfLiteInt16 ? tensor->data.i16[i] : tensor->data.int8[i];
  return static_cast<float>(value - tensor->params.zero_point) * tensor->params.scale;
}

void Requantize(const int8_t* from, const TfLiteTensor* from_tensor, int8_t* to, const TfLiteTensor* to_tensor,
                int count) {
  if (from_tensor->params.scale == to_tensor->params.scale &&
      from_tensor->params.zero_point == to_tensor->params.zero_point) {
    memcpy(to, from, count);
    return;
  }
  for (int i = 0; i < count; i++) to[i] = Quantize(Dequantize(from[i], from_tensor), to_tensor);
}

// int8 values of from_tensor's quantisation into element 0.. of an int8 or int16 tensor
void RequantizeInto(const int8_t* from, const TfLiteTensor* from_tensor, TfLiteTensor* to, int count) {
  if (to->type != kTfLiteInt16) {
    Requantize(from, from_tensor, to->data.int8, to, count);
    return;
  }
  for (int i = 0; i < count; i++) to->data.i16[i] = Quantize16(Dequantize(from[i], from_tensor), to);
}

// Per-operator cycles (KM_PROFILE_OPERATORS): TFLite-Micro reports each operator's Invoke as an
// event; events are numbered in order within each of our Invoke calls, so number i is the model's
// i-th operator (AllocateTensors' events are not counted).
#ifdef KM_PROFILE_OPERATORS
class OperatorProfiler : public tflite::MicroProfilerInterface {
 public:
  static constexpr int kMaxOperators = 128;
  uint32_t BeginEvent(const char* tag) override {
    if (!active_ || next_ >= kMaxOperators) return kMaxOperators;
    const int i = next_++;
    tags_[i] = tag;
    if (i >= count_) count_ = i + 1;
    starts_[i] = km_platform_cycles();
    return i;
  }
  void EndEvent(uint32_t handle) override {
    if (handle < kMaxOperators) cycles_[handle] += km_platform_cycles() - starts_[handle];
  }
  void Start() { active_ = true, next_ = 0; }
  void Stop() { active_ = false; }
  int Count() const { return count_; }
  uint64_t Cycles(int i, const char** tag) const {
    *tag = tags_[i];
    return cycles_[i];
  }

 private:
  bool active_ = false;
  int next_ = 0, count_ = 0;
  const char* tags_[kMaxOperators] = {};
  uint32_t starts_[kMaxOperators] = {};
  uint64_t cycles_[kMaxOperators] = {};
};
OperatorProfiler g_profilers[KM_PIECE_COUNT];
#endif

bool Invoke(Model& model) {
#ifdef KM_PROFILE_OPERATORS
  g_profilers[model.piece - kPieces].Start();
#endif
  const uint32_t start = km_platform_cycles();
  const bool ok = model.interpreter->Invoke() == kTfLiteOk;
#ifdef KM_PROFILE_OPERATORS
  g_profilers[model.piece - kPieces].Stop();
#endif
  const uint32_t spent = km_platform_cycles() - start;
  g_stats.model_cycles += spent;
  model.cycles += spent;
  g_stats.invocations++;
  if (!ok) Report("error: %s: Invoke failed", model.piece->name);
  return ok;
}

uint32_t Milliseconds(uint32_t embedding) { return embedding * KM_EMBEDDING_MS; }

// -- frame tasks: median filter (nearest at the edges), threshold, events ---------------------------
void EmitFiltered(Model& m, uint32_t frame, uint32_t last_decision) {
  const km_piece& p = *m.piece;
  const int half = p.median_frames / 2;
  const uint32_t time_ms = Milliseconds(frame);
  for (int c = 0; c < p.class_count; c++) {
    int on = 0;
    for (int k = -half; k <= half; k++) {
      long index = static_cast<long>(frame) + k;
      if (index < 0) index = 0;
      if (index > static_cast<long>(last_decision)) index = last_decision;
      on += index == 0 ? m.first[c] : m.decisions[index % p.median_frames][c];
    }
    const uint8_t active = on > half;
    if (active && !m.active[c]) {
      if (!(g_flushing && time_ms >= g_duration_ms))
        Report("%s: %s onset %lu.%03lu s", p.task, p.labels[c], (unsigned long)(time_ms / 1000),
               (unsigned long)(time_ms % 1000));
      else
        continue;  // starts after the end of the recording (padding): dropped, as on the host
    } else if (!active && m.active[c]) {
      const uint32_t end = (g_flushing && time_ms > g_duration_ms) ? g_duration_ms : time_ms;
      Report("%s: %s offset %lu.%03lu s", p.task, p.labels[c], (unsigned long)(end / 1000),
             (unsigned long)(end % 1000));
    }
    m.active[c] = active;
  }
}

void StepFrame(Model& m, const int8_t* embedding, const TfLiteTensor* embedding_tensor) {
  const km_piece& p = *m.piece;
  tflite::MicroInterpreter& it = *m.interpreter;
  TfLiteTensor* frame = it.input(p.frame_input);
  TfLiteTensor* state = it.input(p.state_input);
  const bool wide = state->type == kTfLiteInt16;  // a 16x8 step: int16 frame, state and scores
  const int state_values = static_cast<int>(state->bytes / (wide ? 2 : 1));
  RequantizeInto(embedding, embedding_tensor, frame, static_cast<int>(frame->bytes / (wide ? 2 : 1)));
  if (!m.started) {  // zero state, as a float zero quantised
    for (int i = 0; i < state_values; i++) {
      if (wide)
        state->data.i16[i] = Quantize16(0.0f, state);
      else
        state->data.int8[i] = Quantize(0.0f, state);
    }
    m.started = true;
  }
  if (!Invoke(m)) return;
  const TfLiteTensor* scores = it.output(p.scores_output);
  const TfLiteTensor* new_state = it.output(p.state_output);
  alignas(4) int8_t next_state[kMaxState];
  if (new_state->params.scale == state->params.scale && new_state->params.zero_point == state->params.zero_point) {
    memcpy(next_state, new_state->data.raw, state->bytes);
  } else if (wide) {
    int16_t* next = reinterpret_cast<int16_t*>(next_state);
    for (int i = 0; i < state_values; i++) next[i] = Quantize16(DequantizeAt(new_state, i), state);
  } else {
    Requantize(new_state->data.int8, new_state, next_state, state, state->bytes);
  }
#ifdef KM_TRACE
  {
    char line[8 + 7 * kMaxClasses];
    int at = snprintf(line, sizeof(line), "trace %s %lu:", p.name, (unsigned long)m.steps);
    for (int c = 0; c < p.class_count; c++)
      at += snprintf(line + at, sizeof(line) - at, " %d", wide ? scores->data.i16[c] : scores->data.int8[c]);
    g_report(line);
  }
#endif
  uint8_t* decision = m.decisions[m.steps % p.median_frames];
  for (int c = 0; c < p.class_count; c++) decision[c] = DequantizeAt(scores, c) > p.threshold;
  if (m.steps == 0) memcpy(m.first, decision, p.class_count);
  // the filtered value of frame t needs decisions up to t + half
  const uint32_t half = p.median_frames / 2;
  if (m.steps >= half) EmitFiltered(m, m.steps - half, m.steps);
  m.steps++;
  memcpy(state->data.raw, next_state, state->bytes);  // after Invoke: inputs may share arena memory
}

void FinishFrameTask(Model& m) {
  if (m.steps == 0) return;
  const uint32_t half = m.piece->median_frames / 2;
  const uint32_t first = m.steps > half ? m.steps - half : 0;
  for (uint32_t t = first; t < m.steps; t++) EmitFiltered(m, t, m.steps - 1);
  // still active at the end: closes at the last frame's end, clipped to the recording
  const km_piece& p = *m.piece;
  uint32_t end = Milliseconds(m.steps);
  if (end > g_duration_ms) end = g_duration_ms;
  for (int c = 0; c < p.class_count; c++) {
    if (m.active[c])
      Report("%s: %s offset %lu.%03lu s", p.task, p.labels[c], (unsigned long)(end / 1000),
             (unsigned long)(end % 1000));
    m.active[c] = 0;
  }
}

// -- clip heads ------------------------------------------------------------------------------------
void ClipWindow(Model& m, const int8_t* embeddings, const TfLiteTensor* embedding_tensor, int count) {
  const km_piece& p = *m.piece;
  TfLiteTensor* input = m.interpreter->input(0);
  const int per_window = count;
  const int total = input->bytes;
  // shift the history one window and append this one
  if (p.windows > 1) memmove(m.history, m.history + per_window, total - per_window);
  Requantize(embeddings, embedding_tensor, m.history + total - per_window, input, per_window);
  m.windows_seen++;
  if (m.windows_seen < p.windows) return;
  memcpy(input->data.int8, m.history, total);
  if (!Invoke(m)) return;
  const TfLiteTensor* scores = m.interpreter->output(0);
  int best = 0;
  for (int c = 1; c < p.class_count; c++)
    if (scores->data.int8[c] > scores->data.int8[best]) best = c;
  const int percent = static_cast<int>(lrintf(100.0f * Dequantize(scores->data.int8[best], scores)));
  const uint32_t end_ms = static_cast<uint32_t>(m.windows_seen) * KM_ENCODER_HOP_FRAMES * KM_HOP_SAMPLES /
                          (KM_SAMPLE_RATE / 1000);
  const uint32_t start_ms = end_ms - p.windows * KM_ENCODER_HOP_FRAMES * KM_HOP_SAMPLES / (KM_SAMPLE_RATE / 1000);
  Report("%s: %lu.%03lu-%lu.%03lu s %s %d%%", p.task, (unsigned long)(start_ms / 1000),
         (unsigned long)(start_ms % 1000), (unsigned long)(end_ms / 1000), (unsigned long)(end_ms % 1000),
         p.labels[best], percent);
}

// -- the encoder ------------------------------------------------------------------------------------
#if KM_ENCODER_STEPPED
// One step: the new frames and the states in, one embedding per output (after its lag) to the heads
// and frame steps, the new states kept for the next step.
void RunWindow() {
  tflite::MicroInterpreter& it = *g_encoder->interpreter;
  TfLiteTensor* mel = it.input(KM_ENCODER_MEL_INPUT);
  memcpy(mel->data.int8, g_window, sizeof(g_window));
  int8_t* state = g_states;
  for (int k = 0; k < KM_ENCODER_STATE_COUNT; k++) {
    TfLiteTensor* input = it.input(kEncoderStateInputs[k]);
    memcpy(input->data.int8, state, input->bytes);
    state += input->bytes;
  }
  g_stats.windows++;
  g_window_rows = 0;
  if (!Invoke(*g_encoder)) return;
  for (int i = 0; i < KM_PIECE_COUNT; i++) {
    Model& m = g_models[i];
    if (m.piece->kind != KM_CLIP_HEAD && m.piece->kind != KM_FRAME_STEP) continue;
    const TfLiteTensor* out = it.output(m.piece->encoder_output);
    const int frames = out->dims->data[1], width = out->dims->data[2];
    for (int f = 0; f < frames; f++) {
      const uint32_t index = m.received++;
      const uint32_t lag = kEncoderLags[m.piece->encoder_output];
      if (index < lag || index - lag >= g_wanted) continue;  // before the stream, or after the flush's end
      const int8_t* embedding = out->data.int8 + f * width;
      if (m.piece->kind == KM_FRAME_STEP) {
        StepFrame(m, embedding, out);
      } else {
        memcpy(m.pending + m.pending_count * width, embedding, width);
        if (++m.pending_count == KM_EMBEDDINGS_PER_WINDOW) {
          ClipWindow(m, m.pending, out, KM_EMBEDDINGS_PER_WINDOW * width);
          m.pending_count = 0;
        }
      }
    }
  }
  // the new states, requantised to the inputs' quantisation (outputs may share memory with inputs);
  // in the first steps, the rows holding frames from before the stream set to zero: the step computed
  // them from the zero states, the whole-clip network pads there with zeros (streaming.before_stream)
  if (g_steps < 0xFFFF) g_steps++;
  state = g_states;
  for (int k = 0; k < KM_ENCODER_STATE_COUNT; k++) {
    const TfLiteTensor* output = it.output(kEncoderStateOutputs[k]);
    const TfLiteTensor* input = it.input(kEncoderStateInputs[k]);
    Requantize(output->data.int8, output, state, input, input->bytes);
    const int before = kEncoderStateLead[k] - static_cast<int>(g_steps) * kEncoderStateStepRows[k];
    if (before > 0) {
      const int rows = before < kEncoderStateRows[k] ? before : kEncoderStateRows[k];
      memset(state, Quantize(0.0f, input), rows * (input->bytes / kEncoderStateRows[k]));
    }
    state += input->bytes;
  }
}
#else
void RunWindow() {
  TfLiteTensor* input = g_encoder->interpreter->input(0);
  memcpy(input->data.int8, g_window, sizeof(g_window));
  g_stats.windows++;
  if (!Invoke(*g_encoder)) return;
  for (int i = 0; i < KM_PIECE_COUNT; i++) {
    Model& m = g_models[i];
    if (m.piece->kind != KM_CLIP_HEAD && m.piece->kind != KM_FRAME_STEP) continue;
    const TfLiteTensor* out = g_encoder->interpreter->output(m.piece->encoder_output);
    const int frames = out->dims->data[1], width = out->dims->data[2];
    if (m.piece->kind == KM_CLIP_HEAD) {
      ClipWindow(m, out->data.int8, out, frames * width);
    } else {
      for (int f = 0; f < frames; f++) StepFrame(m, out->data.int8 + f * width, out);
    }
  }
  // keep the context: the next window starts KM_ENCODER_HOP_FRAMES frames later
  const int keep = KM_ENCODER_WINDOW_FRAMES - KM_ENCODER_HOP_FRAMES;
  memmove(g_window, g_window[KM_ENCODER_HOP_FRAMES], keep * KM_MEL_BANDS);
  g_window_rows = keep;
}
#endif

const TfLiteTensor* EncoderInput() {
#if KM_ENCODER_STEPPED
  return g_encoder->interpreter->input(KM_ENCODER_MEL_INPUT);
#else
  return g_encoder->interpreter->input(0);
#endif
}

void AddFrameRow(const float* mel) {
  const TfLiteTensor* input = EncoderInput();
  for (int b = 0; b < KM_MEL_BANDS; b++) g_window[g_window_rows][b] = Quantize(mel[b], input);
  g_window_rows++;
  if (g_window_rows == KM_ENCODER_WINDOW_FRAMES) RunWindow();
}

void ComputeFrame() {
  const uint32_t start = km_platform_cycles();
  km_logmel_frame(&kLogMel, g_samples, g_work, g_mel);
  km_level_update(&kLogMel, &g_level, g_mel);
  g_stats.frontend_cycles += km_platform_cycles() - start;
  g_stats.frames++;
  AddFrameRow(g_mel);
}

void PushSample(float sample) {
  g_samples[g_filled++] = sample;
  if (g_filled == KM_WINDOW_SAMPLES) {
    ComputeFrame();
    memmove(g_samples, g_samples + KM_HOP_SAMPLES, (KM_WINDOW_SAMPLES - KM_HOP_SAMPLES) * sizeof(float));
    g_filled = KM_WINDOW_SAMPLES - KM_HOP_SAMPLES;
  }
}

void Reset() {
#if KM_ENCODER_STEPPED
  // frames before the stream: zero in every state, as the whole-clip network's padding
  g_steps = 0;
  int8_t* state = g_states;
  for (int k = 0; k < KM_ENCODER_STATE_COUNT; k++) {
    const TfLiteTensor* input = g_encoder->interpreter->input(kEncoderStateInputs[k]);
    for (size_t i = 0; i < input->bytes; i++) state[i] = Quantize(0.0f, input);
    state += input->bytes;
  }
#endif
  memset(g_samples, 0, sizeof(g_samples));
  g_level = km_level_state{0.0f, 0};
  g_filled = kPad;  // the centred first frame sees kPad zeros before the audio
  g_window_rows = 0;
  for (int c = 0; c < KM_CONTEXT_FRAMES; c++) {  // context before the first frame: the pad frame
    const TfLiteTensor* input = EncoderInput();
    for (int b = 0; b < KM_MEL_BANDS; b++) g_window[g_window_rows][b] = Quantize(kPadFrame[b], input);
    g_window_rows++;
  }
}

}  // namespace

bool ListenerStart(ReportFunction report) {
  g_report = report;
#define KM_ADD_OPERATOR(name) g_resolver.Add##name();
  KM_OPERATORS(KM_ADD_OPERATOR)
#undef KM_ADD_OPERATOR
  alignas(tflite::MicroInterpreter) static uint8_t interpreters[KM_PIECE_COUNT][sizeof(tflite::MicroInterpreter)];
  for (int i = 0; i < KM_PIECE_COUNT; i++) {
    Model& m = g_models[i];
    m.piece = &kPieces[i];
    if (m.piece->kind == KM_CLIP_MODEL) {
      Report("%s: a whole-clip model; this firmware runs streaming pieces only (skipped)", m.piece->name);
      continue;
    }
    if (m.piece->class_count > kMaxClasses || m.piece->median_frames > kMaxMedian) {
      Report("error: %s: more classes or a longer median filter than this firmware supports", m.piece->name);
      return false;
    }
    m.arena = m.piece->kind == KM_ENCODER ? g_arena_encoder : new (std::nothrow) uint8_t[m.piece->arena_size + 16];
    if (m.arena == nullptr) {
      Report("error: %s: no memory for a %d-byte arena", m.piece->name, m.piece->arena_size);
      return false;
    }
    uint8_t* aligned = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(m.arena) + 15) & ~uintptr_t(15));
#ifdef KM_PROFILE_OPERATORS
    tflite::MicroProfilerInterface* profiler = &g_profilers[i];
#else
    tflite::MicroProfilerInterface* profiler = nullptr;
#endif
    m.interpreter = new (interpreters[i]) tflite::MicroInterpreter(tflite::GetModel(m.piece->model), g_resolver,
                                                                   aligned, m.piece->arena_size, nullptr, profiler);
    if (m.interpreter->AllocateTensors() != kTfLiteOk) {
      Report("error: %s: AllocateTensors failed with a %d-byte arena", m.piece->name, m.piece->arena_size);
      return false;
    }
    if (m.piece->kind == KM_FRAME_STEP && m.interpreter->input(m.piece->state_input)->bytes > kMaxState) {
      Report("error: %s: a recurrent state larger than this firmware's %u bytes", m.piece->name, (unsigned)kMaxState);
      return false;
    }
    g_stats.arena_bytes += m.piece->arena_size;
    if (m.piece->kind == KM_ENCODER) g_encoder = &m;
    if (m.piece->kind == KM_CLIP_HEAD) {
      m.history = new (std::nothrow) int8_t[m.interpreter->input(0)->bytes]();
      bool allocated = m.history != nullptr;
#if KM_ENCODER_STEPPED  // one second of embeddings, collected step by step
      m.pending = new (std::nothrow) int8_t[m.interpreter->input(0)->bytes / m.piece->windows]();
      allocated = allocated && m.pending != nullptr;
#endif
      if (!allocated) {
        Report("error: %s: out of memory", m.piece->name);
        return false;
      }
    }
    Report("model %s: %lu bytes of arena used of %d", m.piece->name,
           (unsigned long)m.interpreter->arena_used_bytes(), m.piece->arena_size);
  }
  if (g_encoder == nullptr) {
    Report("error: no encoder among the exported models");
    return false;
  }
  Reset();
  return true;
}

void ListenerPush(const int16_t* samples, size_t count) {
  for (size_t i = 0; i < count; i++) PushSample(samples[i] / 32768.0f);
  g_stats.samples += count;
}

void ListenerFlush() {
  g_flushing = true;
  g_duration_ms = static_cast<uint32_t>((uint64_t)g_stats.samples * 1000 / KM_SAMPLE_RATE);
  // the frames left: 1 + samples / hop in all, each seeing zeros after the audio
  const uint32_t total_frames = 1 + g_stats.samples / KM_HOP_SAMPLES;
  while (g_stats.frames < total_frames) PushSample(0.0f);
  // windows: max(1, ceil((frames - 1) / hop)); beyond the last frame the pad frame
  uint32_t windows = (total_frames - 1 + KM_ENCODER_HOP_FRAMES - 1) / KM_ENCODER_HOP_FRAMES;
  if (windows < 1) windows = 1;
#if KM_ENCODER_STEPPED
  // as many embeddings as those windows hold; steps until the latest output has given them all
  g_wanted = windows * KM_EMBEDDINGS_PER_WINDOW;
  const uint32_t per_step = KM_EMBEDDINGS_PER_WINDOW * KM_ENCODER_WINDOW_FRAMES / KM_ENCODER_HOP_FRAMES;
  uint32_t steps = 0;
  for (int k = 0; k < KM_ENCODER_OUTPUT_COUNT; k++) {
    const uint32_t needed = (g_wanted + kEncoderLags[k] + per_step - 1) / per_step;
    if (needed > steps) steps = needed;
  }
  windows = steps;
#endif
  while (g_stats.windows < windows) {
    const TfLiteTensor* input = EncoderInput();
    for (int b = 0; b < KM_MEL_BANDS; b++) g_window[g_window_rows][b] = Quantize(kPadFrame[b], input);
    if (++g_window_rows == KM_ENCODER_WINDOW_FRAMES) RunWindow();
  }
  for (int i = 0; i < KM_PIECE_COUNT; i++)
    if (g_models[i].piece->kind == KM_FRAME_STEP) FinishFrameTask(g_models[i]);
}

ListenerStats ListenerStatistics() { return g_stats; }

int ListenerPieceCount() { return KM_PIECE_COUNT; }

uint64_t ListenerPieceCycles(int index, const char** name) {
  *name = kPieces[index].name;
  return g_models[index].cycles;
}

int ListenerOperatorCount(int piece) {
#ifdef KM_PROFILE_OPERATORS
  return g_profilers[piece].Count();
#else
  return 0;
#endif
}

uint64_t ListenerOperatorCycles(int piece, int index, const char** tag) {
#ifdef KM_PROFILE_OPERATORS
  return g_profilers[piece].Cycles(index, tag);
#else
  *tag = "";
  return 0;
#endif
}

}  // namespace keras_mtl
