// oneDNN 2-D convolutions (forward, backward-data, backward-weights) as XLA FFI handlers.
//
// Layouts are the JAX side's: activations NHWC, weights HWIO, float32. The forward and
// backward-weights handlers come in two forms, with and without a bias (the bias is added, and its
// gradient summed, inside the primitive: no extra pass over the output). The handlers share
// one set of attributes (strides, explicit padding lo/hi, dilation in JAX's convention, i.e. 1 =
// dense) and take every shape from the buffers, so one compiled library serves every layer.
//
// Primitive descriptors and primitives are created once per (kind, shapes, strides, padding,
// dilation) and kept in a process-wide map behind a mutex; creating a oneDNN primitive JITs its
// kernel (milliseconds), executing it again costs microseconds. Scratchpads are user-managed
// (one growing buffer per calling thread) so that one cached primitive can run on several XLA
// threads at once: with the library-managed scratchpad a primitive owns one buffer and
// concurrent executions of it would share it. Activations are used in place (NHWC); weights go
// through a reorder into the layout the primitive prefers when that is not HWIO.

#include <cstdint>
#include <cstdio>
#include <exception>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

enum class Kind : int64_t { kForward = 0, kBackwardData = 1, kBackwardWeights = 2 };

struct Geometry {
  bool bias = false;           // forward: adds a bias; backward-weights: also returns its gradient
  bool relu = false;           // forward: ReLU as a post-op on the result
  dnnl::memory::dims src;      // N, C, H, W (logical; the memory is nhwc)
  dnnl::memory::dims weights;  // O, I, KH, KW (logical; the memory is hwio)
  dnnl::memory::dims dst;      // N, O, Ho, Wo
  dnnl::memory::dims strides, dilates, pad_l, pad_r;
};

struct Entry {
  dnnl::primitive prim;
  size_t scratchpad_bytes = 0;
  // Set when the primitive wants its (diff) weights in another layout than HWIO: the reorder
  // between the two and the primitive's layout. oneDNN's fast (brgemm / jit) backward kernels
  // take blocked weights only; with HWIO forced they fall back to im2col + gemm, 2-4x slower.
  bool reorder_weights = false;
  dnnl::memory::desc weights_desc;
  dnnl::reorder weights_reorder;
};

dnnl::engine& Engine() {
  static dnnl::engine* engine = new dnnl::engine(dnnl::engine::kind::cpu, 0);
  return *engine;
}

dnnl::stream& Stream() {
  // oneDNN streams are not thread-safe; XLA runs custom calls on several threads.
  thread_local dnnl::stream stream(Engine());
  return stream;
}

// Per-thread buffers, grown as needed: 0 = scratchpad, 1 = weights in the primitive's layout.
// 64-byte aligned (a cache line, a full AVX-512 vector), as oneDNN's own allocations.
char* Buffer(int which, size_t bytes) {
  constexpr size_t kAlign = 64;
  thread_local std::vector<char> buffers[2];
  auto& buffer = buffers[which];
  if (buffer.size() < bytes + kAlign) buffer.resize(bytes + kAlign);
  auto address = reinterpret_cast<uintptr_t>(buffer.data());
  return buffer.data() + (kAlign - address % kAlign) % kAlign;
}

dnnl::memory::desc Desc(const dnnl::memory::dims& dims, dnnl::memory::format_tag tag) {
  return dnnl::memory::desc(dims, dnnl::memory::data_type::f32, tag);
}

// A zero descriptor (no bias) when the geometry has none: oneDNN reads it as an absent argument.
dnnl::memory::desc BiasDesc(const Geometry& g) {
  return g.bias ? Desc({g.weights[0]}, dnnl::memory::format_tag::x) : dnnl::memory::desc();
}

dnnl::convolution_forward::primitive_desc ForwardPd(const Geometry& g,
                                                    const dnnl::primitive_attr& attr,
                                                    dnnl::memory::format_tag weights) {
  using tag = dnnl::memory::format_tag;
  return dnnl::convolution_forward::primitive_desc(
      Engine(), dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct,
      Desc(g.src, tag::nhwc), Desc(g.weights, weights), BiasDesc(g), Desc(g.dst, tag::nhwc),
      g.strides, g.dilates, g.pad_l, g.pad_r, attr);
}

std::shared_ptr<Entry> MakeEntry(Kind kind, const Geometry& g) {
  using tag = dnnl::memory::format_tag;
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  auto entry = std::make_shared<Entry>();
  // Activations stay NHWC (reordering them would cost a pass over the largest arrays); the
  // weights are small, so the primitive picks their layout ("any") and we reorder.
  if (g.relu) {  // set for the forward kind only
    dnnl::post_ops ops;
    ops.append_eltwise(dnnl::algorithm::eltwise_relu, 0.0f, 0.0f);
    attr.set_post_ops(ops);
  }
  auto fwd = ForwardPd(g, attr, tag::any);
  dnnl::memory::desc chosen;
  if (kind == Kind::kForward) {
    entry->prim = dnnl::convolution_forward(fwd);
    entry->scratchpad_bytes = fwd.scratchpad_desc().get_size();
    chosen = fwd.weights_desc();
  } else if (kind == Kind::kBackwardData) {
    dnnl::convolution_backward_data::primitive_desc pd(
        Engine(), dnnl::algorithm::convolution_direct, Desc(g.src, tag::nhwc),
        Desc(g.weights, tag::any), Desc(g.dst, tag::nhwc), g.strides, g.dilates, g.pad_l,
        g.pad_r, fwd, attr);
    entry->prim = dnnl::convolution_backward_data(pd);
    entry->scratchpad_bytes = pd.scratchpad_desc().get_size();
    chosen = pd.weights_desc();
  } else {
    dnnl::convolution_backward_weights::primitive_desc pd(
        Engine(), dnnl::algorithm::convolution_direct, Desc(g.src, tag::nhwc),
        Desc(g.weights, tag::any), BiasDesc(g), Desc(g.dst, tag::nhwc), g.strides, g.dilates,
        g.pad_l, g.pad_r, fwd, attr);
    entry->prim = dnnl::convolution_backward_weights(pd);
    entry->scratchpad_bytes = pd.scratchpad_desc().get_size();
    chosen = pd.diff_weights_desc();
  }
  auto user = Desc(g.weights, tag::hwio);
  if (chosen != user) {
    entry->reorder_weights = true;
    entry->weights_desc = chosen;
    auto& eng = Engine();
    entry->weights_reorder = kind == Kind::kBackwardWeights
                                 ? dnnl::reorder(dnnl::reorder::primitive_desc(eng, chosen, eng, user))
                                 : dnnl::reorder(dnnl::reorder::primitive_desc(eng, user, eng, chosen));
  }
  return entry;
}

std::shared_ptr<Entry> Lookup(Kind kind, const Geometry& g) {
  static std::mutex* mu = new std::mutex;
  static auto* cache = new std::map<std::vector<int64_t>, std::shared_ptr<Entry>>;
  std::vector<int64_t> key{static_cast<int64_t>(kind), g.bias ? 1 : 0, g.relu ? 1 : 0};
  for (const auto* dims : {&g.src, &g.weights, &g.dst, &g.strides, &g.dilates, &g.pad_l,
                           &g.pad_r}) {
    key.insert(key.end(), dims->begin(), dims->end());
  }
  {
    std::lock_guard<std::mutex> lock(*mu);
    auto it = cache->find(key);
    if (it != cache->end()) return it->second;
  }
  // Built outside the lock (JIT takes milliseconds); a concurrent duplicate is harmless.
  auto entry = MakeEntry(kind, g);
  std::lock_guard<std::mutex> lock(*mu);
  return cache->emplace(key, entry).first->second;
}

// x: (N, H, W, C) buffer dims; w: (KH, KW, I, O); y: (N, Ho, Wo, O).
Geometry MakeGeometry(ffi::Span<const int64_t> x, ffi::Span<const int64_t> w,
                      ffi::Span<const int64_t> y, int64_t sh, int64_t sw, int64_t pt,
                      int64_t pb, int64_t pl, int64_t pr, int64_t dh, int64_t dw) {
  Geometry g;
  g.src = {x[0], x[3], x[1], x[2]};
  g.weights = {w[3], w[2], w[0], w[1]};
  g.dst = {y[0], y[3], y[1], y[2]};
  g.strides = {sh, sw};
  g.dilates = {dh - 1, dw - 1};  // oneDNN counts the inserted gaps, JAX the spacing.
  g.pad_l = {pt, pl};
  g.pad_r = {pb, pr};
  return g;
}

// bias: the forward's bias, or the backward-weights' bias gradient; null without a bias.
ffi::Error Run(Kind kind, const Geometry& g, void* src, void* weights, void* dst,
               void* bias = nullptr) {
  using tag = dnnl::memory::format_tag;
  try {
    auto entry = Lookup(kind, g);
    auto& eng = Engine();
    auto& stream = Stream();
    dnnl::memory src_m(Desc(g.src, tag::nhwc), eng, src);
    dnnl::memory user_wei_m(Desc(g.weights, tag::hwio), eng, weights);
    dnnl::memory dst_m(Desc(g.dst, tag::nhwc), eng, dst);
    dnnl::memory wei_m = user_wei_m;
    if (entry->reorder_weights) {
      wei_m = dnnl::memory(entry->weights_desc, eng,
                           Buffer(1, entry->weights_desc.get_size()));
      if (kind != Kind::kBackwardWeights) {
        entry->weights_reorder.execute(stream, user_wei_m, wei_m);
      }
    }
    dnnl::memory::desc pad_desc({static_cast<dnnl::memory::dim>(entry->scratchpad_bytes)},
                                dnnl::memory::data_type::u8, tag::x);
    dnnl::memory pad_m(pad_desc, eng, Buffer(0, entry->scratchpad_bytes));
    std::unordered_map<int, dnnl::memory> args{{DNNL_ARG_SCRATCHPAD, pad_m}};
    if (g.bias) {
      args.insert({kind == Kind::kForward ? DNNL_ARG_BIAS : DNNL_ARG_DIFF_BIAS,
                   dnnl::memory(BiasDesc(g), eng, bias)});
    }
    if (kind == Kind::kForward) {
      args.insert({{DNNL_ARG_SRC, src_m}, {DNNL_ARG_WEIGHTS, wei_m}, {DNNL_ARG_DST, dst_m}});
    } else if (kind == Kind::kBackwardData) {
      args.insert(
          {{DNNL_ARG_DIFF_SRC, src_m}, {DNNL_ARG_WEIGHTS, wei_m}, {DNNL_ARG_DIFF_DST, dst_m}});
    } else {
      args.insert(
          {{DNNL_ARG_SRC, src_m}, {DNNL_ARG_DIFF_WEIGHTS, wei_m}, {DNNL_ARG_DIFF_DST, dst_m}});
    }
    entry->prim.execute(stream, args);
    if (entry->reorder_weights && kind == Kind::kBackwardWeights) {
      entry->weights_reorder.execute(stream, wei_m, user_wei_m);
    }
    stream.wait();
  } catch (const std::exception& e) {  // dnnl::error, std::bad_alloc: never past the C ABI
    return ffi::Error::Internal(std::string("oneDNN convolution failed: ") + e.what());
  }
  return ffi::Error::Success();
}

ffi::Error ForwardImpl(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                       ffi::ResultBuffer<ffi::F32> y, int64_t sh, int64_t sw, int64_t pt,
                       int64_t pb, int64_t pl, int64_t pr, int64_t dh, int64_t dw, int64_t relu) {
  auto g = MakeGeometry(x.dimensions(), w.dimensions(), y->dimensions(), sh, sw, pt, pb, pl, pr,
                        dh, dw);
  g.relu = relu != 0;
  return Run(Kind::kForward, g, x.untyped_data(), w.untyped_data(), y->untyped_data());
}

ffi::Error ForwardBiasImpl(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                           ffi::Buffer<ffi::F32> b, ffi::ResultBuffer<ffi::F32> y, int64_t sh,
                           int64_t sw, int64_t pt, int64_t pb, int64_t pl, int64_t pr, int64_t dh,
                           int64_t dw, int64_t relu) {
  auto g = MakeGeometry(x.dimensions(), w.dimensions(), y->dimensions(), sh, sw, pt, pb, pl, pr,
                        dh, dw);
  g.bias = true;
  g.relu = relu != 0;
  return Run(Kind::kForward, g, x.untyped_data(), w.untyped_data(), y->untyped_data(),
             b.untyped_data());
}

ffi::Error BackwardDataImpl(ffi::Buffer<ffi::F32> dy, ffi::Buffer<ffi::F32> w,
                            ffi::ResultBuffer<ffi::F32> dx, int64_t sh, int64_t sw, int64_t pt,
                            int64_t pb, int64_t pl, int64_t pr, int64_t dh, int64_t dw) {
  auto g = MakeGeometry(dx->dimensions(), w.dimensions(), dy.dimensions(), sh, sw, pt, pb, pl,
                        pr, dh, dw);
  return Run(Kind::kBackwardData, g, dx->untyped_data(), w.untyped_data(), dy.untyped_data());
}

ffi::Error BackwardWeightsImpl(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy,
                               ffi::ResultBuffer<ffi::F32> dw_out, int64_t sh, int64_t sw,
                               int64_t pt, int64_t pb, int64_t pl, int64_t pr, int64_t dh,
                               int64_t dw) {
  auto g = MakeGeometry(x.dimensions(), dw_out->dimensions(), dy.dimensions(), sh, sw, pt, pb, pl,
                        pr, dh, dw);
  return Run(Kind::kBackwardWeights, g, x.untyped_data(), dw_out->untyped_data(),
             dy.untyped_data());
}

ffi::Error BackwardWeightsBiasImpl(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy,
                                   ffi::ResultBuffer<ffi::F32> dw_out,
                                   ffi::ResultBuffer<ffi::F32> db_out, int64_t sh, int64_t sw,
                                   int64_t pt, int64_t pb, int64_t pl, int64_t pr, int64_t dh,
                                   int64_t dw) {
  auto g = MakeGeometry(x.dimensions(), dw_out->dimensions(), dy.dimensions(), sh, sw, pt, pb, pl,
                        pr, dh, dw);
  g.bias = true;
  return Run(Kind::kBackwardWeights, g, x.untyped_data(), dw_out->untyped_data(),
             dy.untyped_data(), db_out->untyped_data());
}

template <typename B>
auto BindAttrs(B binding) {
  return std::move(binding)
      .template Attr<int64_t>("sh")
      .template Attr<int64_t>("sw")
      .template Attr<int64_t>("pt")
      .template Attr<int64_t>("pb")
      .template Attr<int64_t>("pl")
      .template Attr<int64_t>("pr")
      .template Attr<int64_t>("dh")
      .template Attr<int64_t>("dw");
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(IntrakdOnednnConvForward, ForwardImpl,
                              BindAttrs(ffi::Ffi::Bind()
                                            .Arg<ffi::Buffer<ffi::F32>>()
                                            .Arg<ffi::Buffer<ffi::F32>>()
                                            .Ret<ffi::Buffer<ffi::F32>>())
                                  .Attr<int64_t>("relu"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(IntrakdOnednnConvBackwardData, BackwardDataImpl,
                              BindAttrs(ffi::Ffi::Bind()
                                            .Arg<ffi::Buffer<ffi::F32>>()
                                            .Arg<ffi::Buffer<ffi::F32>>()
                                            .Ret<ffi::Buffer<ffi::F32>>()));

XLA_FFI_DEFINE_HANDLER_SYMBOL(IntrakdOnednnConvBackwardWeights, BackwardWeightsImpl,
                              BindAttrs(ffi::Ffi::Bind()
                                            .Arg<ffi::Buffer<ffi::F32>>()
                                            .Arg<ffi::Buffer<ffi::F32>>()
                                            .Ret<ffi::Buffer<ffi::F32>>()));

XLA_FFI_DEFINE_HANDLER_SYMBOL(IntrakdOnednnConvForwardBias, ForwardBiasImpl,
                              BindAttrs(ffi::Ffi::Bind()
                                            .Arg<ffi::Buffer<ffi::F32>>()
                                            .Arg<ffi::Buffer<ffi::F32>>()
                                            .Arg<ffi::Buffer<ffi::F32>>()
                                            .Ret<ffi::Buffer<ffi::F32>>())
                                  .Attr<int64_t>("relu"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(IntrakdOnednnConvBackwardWeightsBias, BackwardWeightsBiasImpl,
                              BindAttrs(ffi::Ffi::Bind()
                                            .Arg<ffi::Buffer<ffi::F32>>()
                                            .Arg<ffi::Buffer<ffi::F32>>()
                                            .Ret<ffi::Buffer<ffi::F32>>()
                                            .Ret<ffi::Buffer<ffi::F32>>()));

// Checks that a CPU engine can be created (the pip build of oneDNN runs its CPU engine through
// SYCL and needs an OpenCL CPU device); returns 0 on success and writes the error otherwise.
extern "C" __attribute__((visibility("default"))) int IntrakdOnednnCheck(char* message, int size) {
  try {
    Engine();
    Stream();
  } catch (const std::exception& e) {
    std::snprintf(message, size, "%s", e.what());
    return 1;
  }
  return 0;
}
