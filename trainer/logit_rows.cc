// The dense distillation loss's pass over the logits, one row at a time, as an XLA FFI handler for CPU.
//
// Computes what trainer/loss.py's `_rows` computes with XLA, for logits [rows, V] (float32):
//   terms per row: KL_T(t || s), KL_1(t || s), CE(s, target), CE(t, target), top-1 agreement;
//   the objective's gradient w.r.t. the student's logits, written over them (the call aliases s to it):
//     g = kl_weight·(p_sT − p_tT)/T + ce_weight·(p_s1 − onehot(target)).
// Why by hand: XLA:CPU does not fuse the six row sums, the terms and the gradient into one loop (no
// multi-output fusion), so its version reads each block of logits ~20 times and runs the loop's fusions one
// thread each. Here a row (V floats of each model, 0.25 MiB at V = 32000) is read from memory once for the row
// maxima, then from cache for the sums and once more for the gradient; rows are shared out over XLA's
// intra-op thread pool.
//
// Exponentials: a branch-free polynomial (Cephes' expf, relative error ~1e-7) so that the loops vectorise; at
// an integer temperature T <= 4, exp(d) = exp(d/T)^T as in the XLA version. Rows whose two weights are both 0
// (padding) get a zero gradient whatever their logits hold, as `jnp.where` selects them away there.

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <new>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

#define INLINE static inline __attribute__((always_inline))
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
// One compiled copy per instruction set, chosen when the library loads (the image runs on any x86-64 host).
#define PER_ISA __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define PER_ISA
#endif

constexpr int kMaxIntegerTemperature = 4;  // trainer.blocked_logits.MAX_INTEGER_TEMPERATURE
constexpr int64_t kChunk = 1024;

INLINE float exp_f(float x) {
  x = std::min(std::max(x, -87.33654f), 88.72283f);
  const float shifter = 12582912.0f;  // 1.5·2^23: adding it rounds to an integer in the low mantissa bits
  const float n = (x * 1.44269504088896341f + shifter) - shifter;
  float r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

// exp(d) from e = exp(d/T): e^T at an integer T (P = T), else a third exponential (P = 0).
template <int P>
INLINE float exp_at_1(float e, float d) {
  if constexpr (P == 0) {
    return exp_f(d);
  } else {
    float r = e;
    for (int k = 1; k < P; ++k) r *= e;
    return r;
  }
}

INLINE float row_max(const float* x, int64_t n) {
  float m = -INFINITY;
#pragma omp simd reduction(max : m)
  for (int64_t v = 0; v < n; ++v) m = x[v] > m ? x[v] : m;
  return m;
}

struct Terms {
  float kl_t, kl_1, ce_s, ce_t, agree;
};

struct Row {
  const float* s;
  const float* t;
  float* g;  // may be s
  int32_t target;
  float kl_weight, ce_weight, temperature;
};

// `est`, `ett`: scratch of n floats each, for exp(d/T) of both models between the sums and the gradient.
template <int P>
INLINE Terms one_row(const Row& row, int64_t n, float* est, float* ett) {
  const float* s = row.s;
  const float* t = row.t;
  const float m_s = row_max(s, n), m_t = row_max(t, n);
  const float temperature = row.temperature, inv_t = 1.0f / temperature;
  // The target logit as `jnp.take_along_axis(..., mode="clip")` reads it (a negative index counts from the end);
  // the gradient's one-hot, as XLA's pass compares the vocabulary index, only for a target within [0, n).
  const int64_t raw = row.target;
  const int64_t target = std::min<int64_t>(std::max<int64_t>(raw < 0 ? raw + n : raw, 0), n - 1);
  const float s_hit = s[target], t_hit = t[target];
  // Sums in float over chunks of kChunk columns (16 lanes each), chunks added in double: float all the way
  // along a 128k row loses ~1e-5 of KL_1 to rounding, as much as the terms' cancellation leaves.
  double sums[6] = {0, 0, 0, 0, 0, 0};
  int agree = 0;
  for (int64_t begin = 0; begin < n; begin += kChunk) {
    const int64_t end = std::min(n, begin + kChunk);
    float z_s1 = 0, z_st = 0, z_t1 = 0, z_tt = 0, a_t = 0, a_1 = 0;
#pragma omp simd reduction(+ : z_s1, z_st, z_t1, z_tt, a_t, a_1) reduction(| : agree)
    for (int64_t v = begin; v < end; ++v) {
      const float d_s = s[v] - m_s, d_t = t[v] - m_t;
      const float e_st = exp_f(d_s * inv_t), e_tt = exp_f(d_t * inv_t);
      const float e_s1 = exp_at_1<P>(e_st, d_s), e_t1 = exp_at_1<P>(e_tt, d_t);
      est[v] = e_st, ett[v] = e_tt;
      const float d_ts = d_t - d_s;
      z_s1 += e_s1, z_st += e_st, z_t1 += e_t1, z_tt += e_tt;
      a_t += e_tt * d_ts, a_1 += e_t1 * d_ts;
      agree |= (d_s == 0.0f) & (d_t == 0.0f);  // some position holds both models' maxima
    }
    sums[0] += z_s1, sums[1] += z_st, sums[2] += z_t1, sums[3] += z_tt, sums[4] += a_t, sums[5] += a_1;
  }
  const float z_s1 = sums[0], z_st = sums[1], z_t1 = sums[2], z_tt = sums[3], a_t = sums[4], a_1 = sums[5];
  const float lz_s1 = std::log(z_s1), lz_st = std::log(z_st), lz_t1 = std::log(z_t1), lz_tt = std::log(z_tt);
  Terms terms;
  terms.kl_t = a_t / z_tt / temperature - lz_tt + lz_st;
  terms.kl_1 = a_1 / z_t1 - lz_t1 + lz_s1;
  terms.ce_s = lz_s1 + m_s - s_hit;
  terms.ce_t = lz_t1 + m_t - t_hit;
  terms.agree = agree ? 1.0f : 0.0f;

  float* g = row.g;
  if (row.kl_weight == 0.0f && row.ce_weight == 0.0f) {
    std::memset(g, 0, n * sizeof(float));
    return terms;
  }
  const float k = row.kl_weight * inv_t;
  const float c_st = k / z_st, c_tt = k / z_tt, c_s1 = row.ce_weight / z_s1;
#pragma omp simd
  for (int64_t v = 0; v < n; ++v) {
    const float e_s1 = P == 0 ? exp_f(s[v] - m_s) : exp_at_1<P>(est[v], 0.0f);
    g[v] = est[v] * c_st - ett[v] * c_tt + e_s1 * c_s1;
  }
  if (raw >= 0 && raw < n) g[raw] -= row.ce_weight;
  return terms;
}

PER_ISA Terms any_row(const Row& row, int64_t n, float* est, float* ett) {
  const float temperature = row.temperature;
  const int power = temperature == std::round(temperature) && temperature >= 1.0f &&
                            temperature <= static_cast<float>(kMaxIntegerTemperature)
                        ? static_cast<int>(temperature)
                        : 0;
  switch (power) {
    case 1:
      return one_row<1>(row, n, est, ett);
    case 2:
      return one_row<2>(row, n, est, ett);
    case 3:
      return one_row<3>(row, n, est, ett);
    case 4:
      return one_row<4>(row, n, est, ett);
    default:
      return one_row<0>(row, n, est, ett);
  }
}

// Rows handed out one at a time to the calling thread and to helpers on the pool; the caller returns when every
// row is done. A helper that starts after the last row was taken finds nothing and ends (it holds this state
// through a shared_ptr, never the caller's stack).
struct Progress {
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};
  std::atomic<bool> out_of_memory{false};  // a thread could not get its scratch rows: its rows are skipped
  std::mutex mu;
  std::condition_variable all_done;
};

}  // namespace

static ffi::Error LogitRowsImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> s, ffi::Buffer<ffi::F32> t,
                                ffi::Buffer<ffi::S32> targets, ffi::Buffer<ffi::F32> kl_weight,
                                ffi::Buffer<ffi::F32> ce_weight, ffi::Buffer<ffi::F32> temperature,
                                ffi::ResultBuffer<ffi::F32> kl_t, ffi::ResultBuffer<ffi::F32> kl_1,
                                ffi::ResultBuffer<ffi::F32> ce_s, ffi::ResultBuffer<ffi::F32> ce_t,
                                ffi::ResultBuffer<ffi::F32> agree, ffi::ResultBuffer<ffi::F32> grad) {
  const auto dims = s.dimensions();
  if (dims.size() == 0 || t.dimensions().size() != dims.size()) {
    return ffi::Error::InvalidArgument("logit_rows: logits must be [..., vocab], the same shape for both models");
  }
  const int64_t n = dims.back();
  const int64_t rows = n > 0 ? static_cast<int64_t>(s.element_count()) / n : 0;
  if (static_cast<int64_t>(t.element_count()) != rows * n || static_cast<int64_t>(targets.element_count()) != rows ||
      static_cast<int64_t>(kl_weight.element_count()) != rows ||
      static_cast<int64_t>(ce_weight.element_count()) != rows ||
      static_cast<int64_t>(temperature.element_count()) != rows) {
    return ffi::Error::InvalidArgument("logit_rows: per-row arguments must have one element per row of logits");
  }
  if (rows == 0) return ffi::Error::Success();
  if (n == 0) return ffi::Error::InvalidArgument("logit_rows: the vocabulary is empty");

  const float* sp = s.typed_data();
  const float* tp = t.typed_data();
  const int32_t* target = targets.typed_data();
  const float* kw = kl_weight.typed_data();
  const float* cw = ce_weight.typed_data();
  const float* temp = temperature.typed_data();
  float* gp = grad->typed_data();
  float* out[5] = {kl_t->typed_data(), kl_1->typed_data(), ce_s->typed_data(), ce_t->typed_data(),
                   agree->typed_data()};

  auto progress = std::make_shared<Progress>();
  auto work = [=]() {
    thread_local std::vector<float> scratch;
    bool have_scratch = true;
    try {
      if (static_cast<int64_t>(scratch.size()) < 2 * n) scratch.resize(2 * n);
    } catch (const std::bad_alloc&) {  // an exception must not leave a pool thread: report it instead
      have_scratch = false;
      progress->out_of_memory = true;
    }
    int64_t r;
    while ((r = progress->next.fetch_add(1)) < rows) {
      if (have_scratch) {
        const Row row{sp + r * n, tp + r * n, gp + r * n, target[r], kw[r], cw[r], temp[r]};
        const Terms x = any_row(row, n, scratch.data(), scratch.data() + n);
        out[0][r] = x.kl_t, out[1][r] = x.kl_1, out[2][r] = x.ce_s, out[3][r] = x.ce_t, out[4][r] = x.agree;
      }
      if (progress->done.fetch_add(1) + 1 == rows) {
        std::lock_guard<std::mutex> lock(progress->mu);
        progress->all_done.notify_all();
      }
    }
  };
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), rows) - 1;
  for (int64_t i = 0; i < helpers; ++i) pool.Schedule(decltype(work)(work));
  work();
  std::unique_lock<std::mutex> lock(progress->mu);
  progress->all_done.wait(lock, [&] { return progress->done.load() == rows; });
  if (progress->out_of_memory) {
    return ffi::Error(ffi::ErrorCode::kResourceExhausted, "logit_rows: out of host memory for the scratch rows");
  }
  return ffi::Error::Success();
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(DistillLogitRows, LogitRowsImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // student logits [..., V]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // teacher logits [..., V]
                                  .Arg<ffi::Buffer<ffi::S32>>()  // targets [...]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // KL weight [...]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // CE weight [...]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // temperature [...]
                                  .Ret<ffi::Buffer<ffi::F32>>()  // KL at T [...]
                                  .Ret<ffi::Buffer<ffi::F32>>()  // KL at 1 [...]
                                  .Ret<ffi::Buffer<ffi::F32>>()  // student CE [...]
                                  .Ret<ffi::Buffer<ffi::F32>>()  // teacher CE [...]
                                  .Ret<ffi::Buffer<ffi::F32>>()  // top-1 agreement [...]
                                  .Ret<ffi::Buffer<ffi::F32>>()  // gradient [..., V] (aliases the student's)
);
