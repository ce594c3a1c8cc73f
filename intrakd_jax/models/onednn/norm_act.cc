// BatchNorm + activation passes over NHWC float32 tensors as XLA FFI handlers, on XLA's threads.
//
// XLA:CPU runs each elementwise fusion and reduction on one thread, and a training BatchNorm
// becomes several passes over the activation (two reductions forward, two backward, the
// normalisation, the ReLU and residual passes). These handlers do the work in the fewest passes
// the cross-device statistics allow, each split over the intra-op thread pool XLA hands to FFI
// calls (the statistics are summed over the data axis between two passes, on the JAX side):
//
//   ChannelSums       x -> [sum_c x, sum_c x^2]                                  (forward, 1 read)
//   NormAct           y = act(m[b,c] * (x * a[c] + s[c]) + r)                    (1 read, 1 write)
//   NormActGradSums   u = m[b,c] * g * [y > 0]; -> [sum_c u, sum_c u * (x - mean)]  (backward)
//   NormActGradInput  dx = alpha[c] * u + beta[c] * (x - mean[c]) + delta[c]     (backward)
//
// m (a per-image, per-channel multiplier: channel dropout) and r (a residual added before the
// activation) are optional; act is the identity or ReLU. Tensors are read as (rows, C) with C
// contiguous; rows are split into chunks, and partial sums are kept per chunk and added in chunk
// order, so results do not depend on which thread ran which chunk. Sums accumulate in float over
// 32 rows at a time, then in double.

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <thread>
#include <type_traits>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// Rows per chunk: large enough that a chunk is long work for a thread, small enough that two
// threads balance; at least one chunk per thread where there are enough rows.
int64_t NumChunks(int64_t rows, int64_t channels) {
  constexpr int64_t kElementsPerChunk = 1 << 15;
  int64_t by_size = (rows * channels + kElementsPerChunk - 1) / kElementsPerChunk;
  return std::max<int64_t>(1, std::min<int64_t>(by_size, rows));
}

// Runs fn(chunk) for chunk in [0, n) on the calling thread and on up to num_threads - 1 tasks of
// XLA's pool. Chunks are claimed from a shared counter, so the caller never waits for a task to
// start (the pool may be busy, or be the caller's own): it only waits for chunks already claimed.
template <typename F>
void ParallelFor(ffi::ThreadPool* pool, int64_t n, const F& fn) {
  int64_t helpers = pool ? std::min<int64_t>(pool->num_threads(), n) - 1 : 0;
  if (helpers <= 0) {
    for (int64_t i = 0; i < n; ++i) fn(i);
    return;
  }
  struct State {
    std::atomic<int64_t> next{0};
    std::atomic<int64_t> done{0};
    int64_t n = 0;
    const F* fn = nullptr;
  };
  auto state = std::make_shared<State>();
  state->n = n;
  state->fn = &fn;
  auto work = [state] {
    for (int64_t i; (i = state->next.fetch_add(1)) < state->n;) {
      (*state->fn)(i);
      state->done.fetch_add(1, std::memory_order_release);
    }
  };
  for (int64_t t = 0; t < helpers; ++t) pool->Schedule(decltype(work)(work));
  work();
  // A late task finds no chunk left and never touches fn: fn outlives every claimed chunk.
  while (state->done.load(std::memory_order_acquire) < n) std::this_thread::yield();
}

struct Layout {
  int64_t rows = 0;            // N * H * W
  int64_t channels = 0;        // C
  int64_t rows_per_image = 0;  // H * W
};

Layout LayoutOf(ffi::Span<const int64_t> dims) {
  Layout l;
  l.channels = dims.back();
  l.rows = 1;
  for (size_t i = 0; i + 1 < dims.size(); ++i) l.rows *= dims[i];
  l.rows_per_image = dims.size() > 1 ? l.rows / std::max<int64_t>(dims[0], 1) : l.rows;
  return l;
}

// Rows [begin, end) of chunk i.
std::pair<int64_t, int64_t> ChunkRows(int64_t chunk, int64_t chunks, int64_t rows) {
  return {rows * chunk / chunks, rows * (chunk + 1) / chunks};
}

ffi::Error CheckSame(const char* what, ffi::Span<const int64_t> a, ffi::Span<const int64_t> b) {
  if (a.size() != b.size() || !std::equal(a.begin(), a.end(), b.begin())) {
    return ffi::Error::InvalidArgument(std::string("norm_act: ") + what +
                                       " must have the shape of x");
  }
  return ffi::Error::Success();
}

// Per-image multiplier (N, C) or an empty buffer (shape (0,)): none.
const float* Multiplier(ffi::Buffer<ffi::F32>& m, const Layout& l) {
  return m.element_count() == 0 ? nullptr : m.typed_data();
}

// Sums per chunk, then added in chunk order into out (2, C): row 0 from acc0, row 1 from acc1.
void ReduceChunks(const std::vector<double>& partial, int64_t chunks, int64_t c, float* out) {
  for (int64_t k = 0; k < 2 * c; ++k) {
    double total = 0.0;
    for (int64_t i = 0; i < chunks; ++i) total += partial[i * 2 * c + k];
    out[k] = static_cast<float>(total);
  }
}

// Calls fn(std::bool_constant<a>, std::bool_constant<b>): the inner loops are compiled once per
// combination of flags, without branches, so they vectorise.
template <typename F>
void Dispatch(bool a, bool b, const F& fn) {
  if (a && b) fn(std::true_type{}, std::true_type{});
  if (a && !b) fn(std::true_type{}, std::false_type{});
  if (!a && b) fn(std::false_type{}, std::true_type{});
  if (!a && !b) fn(std::false_type{}, std::false_type{});
}

// Float accumulators over at most this many rows, then added into the double totals: float
// sums of a few dozen terms lose nothing measurable, and the loops stay at float vector width.
constexpr int64_t kRowsPerFlush = 32;

// Two per-channel sums over all rows into out (2, C): add_row(row, f1, f2) adds one row's terms
// to float accumulators, flushed into double every kRowsPerFlush rows; the chunks' double sums
// are added in chunk order.
template <typename AddRow>
void PairSums(ffi::ThreadPool* pool, const Layout& l, float* out, const AddRow& add_row) {
  const int64_t c = l.channels;
  const int64_t chunks = NumChunks(l.rows, c);
  std::vector<double> partial(chunks * 2 * c, 0.0);
  ParallelFor(pool, chunks, [&](int64_t i) {
    auto [begin, end] = ChunkRows(i, chunks, l.rows);
    double* s = partial.data() + i * 2 * c;
    std::vector<float> f(2 * c);
    for (int64_t block = begin; block < end; block += kRowsPerFlush) {
      std::fill(f.begin(), f.end(), 0.0f);
      for (int64_t row = block; row < std::min(end, block + kRowsPerFlush); ++row) {
        add_row(row, f.data(), f.data() + c);
      }
      for (int64_t k = 0; k < 2 * c; ++k) s[k] += f[k];
    }
  });
  ReduceChunks(partial, chunks, c, out);
}

ffi::Error ChannelSumsImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                           ffi::ResultBuffer<ffi::F32> sums) {
  Layout l = LayoutOf(x.dimensions());
  const int64_t c = l.channels;
  const float* xp = x.typed_data();
  PairSums(&pool, l, sums->typed_data(),
           [&](int64_t row, float* __restrict f1, float* __restrict f2) {
             const float* __restrict xr = xp + row * c;
             for (int64_t k = 0; k < c; ++k) {
               f1[k] += xr[k];
               f2[k] += xr[k] * xr[k];
             }
           });
  return ffi::Error::Success();
}

// coef: (2, C) = [a, s]; y = act(m * (x * a + s) + r).
ffi::Error NormActImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> coef,
                       ffi::Buffer<ffi::F32> m, ffi::Buffer<ffi::F32> r,
                       ffi::ResultBuffer<ffi::F32> y, int64_t relu) {
  Layout l = LayoutOf(x.dimensions());
  const bool residual = r.element_count() != 0;
  if (residual) {
    if (auto e = CheckSame("the residual", r.dimensions(), x.dimensions()); e.failure()) return e;
  }
  const int64_t c = l.channels;
  const int64_t chunks = NumChunks(l.rows, c);
  const float* xp = x.typed_data();
  const float* a = coef.typed_data();
  const float* s = a + c;
  const float* mp = Multiplier(m, l);
  const float* rp = residual ? r.typed_data() : nullptr;
  float* yp = y->typed_data();
  Dispatch(relu != 0, mp != nullptr, [&](auto kRelu, auto kMul) {
    ParallelFor(&pool, chunks, [&](int64_t i) {
      auto [begin, end] = ChunkRows(i, chunks, l.rows);
      for (int64_t row = begin; row < end; ++row) {
        const float* __restrict xr = xp + row * c;
        const float* __restrict mr = kMul ? mp + (row / l.rows_per_image) * c : a;
        float* __restrict yr = yp + row * c;
        if (rp) {
          const float* __restrict rr = rp + row * c;
          for (int64_t k = 0; k < c; ++k) {
            float v = (kMul ? mr[k] : 1.0f) * (xr[k] * a[k] + s[k]) + rr[k];
            yr[k] = kRelu ? std::max(v, 0.0f) : v;
          }
        } else {
          for (int64_t k = 0; k < c; ++k) {
            float v = (kMul ? mr[k] : 1.0f) * (xr[k] * a[k] + s[k]);
            yr[k] = kRelu ? std::max(v, 0.0f) : v;
          }
        }
      }
    });
  });
  return ffi::Error::Success();
}

// The upstream gradient g through the activation and the multiplier: u = m * g * [y > 0].
template <bool kRelu, bool kMul>
inline float Upstream(float g, float y, float m) {
  float u = kMul ? m * g : g;
  return kRelu ? (y > 0.0f ? u : 0.0f) : u;
}

// mean: (C,); out (2, C) = [sum u, sum u * (x - mean)].
ffi::Error NormActGradSumsImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> g,
                               ffi::Buffer<ffi::F32> y, ffi::Buffer<ffi::F32> x,
                               ffi::Buffer<ffi::F32> mean, ffi::Buffer<ffi::F32> m,
                               ffi::ResultBuffer<ffi::F32> sums, int64_t relu) {
  for (auto* t : {&g, &y}) {
    if (auto e = CheckSame("g and y", t->dimensions(), x.dimensions()); e.failure()) return e;
  }
  Layout l = LayoutOf(x.dimensions());
  const int64_t c = l.channels;
  const float *gp = g.typed_data(), *yp = y.typed_data(), *xp = x.typed_data();
  const float* mu = mean.typed_data();
  const float* mp = Multiplier(m, l);
  Dispatch(relu != 0, mp != nullptr, [&](auto kRelu, auto kMul) {
    PairSums(&pool, l, sums->typed_data(),
             [&](int64_t row, float* __restrict f1, float* __restrict f2) {
               const float* __restrict gr = gp + row * c;
               const float* __restrict yr = yp + row * c;
               const float* __restrict xr = xp + row * c;
               const float* __restrict mr = kMul ? mp + (row / l.rows_per_image) * c : mu;
               for (int64_t k = 0; k < c; ++k) {
                 float u = Upstream<kRelu, kMul>(gr[k], yr[k], mr[k]);
                 f1[k] += u;
                 f2[k] += u * (xr[k] - mu[k]);
               }
             });
  });
  return ffi::Error::Success();
}

// coef: (4, C) = [alpha, beta, delta, mean]; dx = alpha * u + beta * (x - mean) + delta.
ffi::Error NormActGradInputImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> g,
                                ffi::Buffer<ffi::F32> y, ffi::Buffer<ffi::F32> x,
                                ffi::Buffer<ffi::F32> coef, ffi::Buffer<ffi::F32> m,
                                ffi::ResultBuffer<ffi::F32> dx, int64_t relu) {
  for (auto* t : {&g, &y}) {
    if (auto e = CheckSame("g and y", t->dimensions(), x.dimensions()); e.failure()) return e;
  }
  Layout l = LayoutOf(x.dimensions());
  const int64_t c = l.channels;
  const int64_t chunks = NumChunks(l.rows, c);
  const float *gp = g.typed_data(), *yp = y.typed_data(), *xp = x.typed_data();
  const float* alpha = coef.typed_data();
  const float* beta = alpha + c;
  const float* delta = beta + c;
  const float* mu = delta + c;
  const float* mp = Multiplier(m, l);
  float* out = dx->typed_data();
  Dispatch(relu != 0, mp != nullptr, [&](auto kRelu, auto kMul) {
    ParallelFor(&pool, chunks, [&](int64_t i) {
      auto [begin, end] = ChunkRows(i, chunks, l.rows);
      for (int64_t row = begin; row < end; ++row) {
        const float* __restrict gr = gp + row * c;
        const float* __restrict yr = yp + row * c;
        const float* __restrict xr = xp + row * c;
        const float* __restrict mr = kMul ? mp + (row / l.rows_per_image) * c : mu;
        float* __restrict o = out + row * c;
        for (int64_t k = 0; k < c; ++k) {
          float u = Upstream<kRelu, kMul>(gr[k], yr[k], mr[k]);
          o[k] = alpha[k] * u + beta[k] * (xr[k] - mu[k]) + delta[k];
        }
      }
    });
  });
  return ffi::Error::Success();
}

// A binding on XLA's thread pool with n float32 buffer arguments and one float32 result.
template <int n>
auto Binding() {
  if constexpr (n == 0) {
    return ffi::Ffi::Bind().Ctx<ffi::ThreadPool>();
  } else {
    return Binding<n - 1>().template Arg<ffi::Buffer<ffi::F32>>();
  }
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(IntrakdChannelSums, ChannelSumsImpl,
                              Binding<1>().Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(IntrakdNormAct, NormActImpl,
                              Binding<4>().Ret<ffi::Buffer<ffi::F32>>().Attr<int64_t>("relu"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(IntrakdNormActGradSums, NormActGradSumsImpl,
                              Binding<5>().Ret<ffi::Buffer<ffi::F32>>().Attr<int64_t>("relu"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(IntrakdNormActGradInput, NormActGradInputImpl,
                              Binding<5>().Ret<ffi::Buffer<ffi::F32>>().Attr<int64_t>("relu"));
