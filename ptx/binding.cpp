// The host binding: built once per torch build (deepergemm/extension.py, load_inline with this plain C++ file and
// no CUDA compiler), it loads the kernel units (one cubin per variant, built by nvcc without torch) through the
// CUDA driver API and is the CUDA implementation of every GEMM op: the dispatcher calls straight into
// this file, with no Python between it and the launch.
//
//   driver       the driver entry points (dlopen of libcuda: nothing to link)
//   rules        the input rules, with the messages of deepergemm/layouts.py (tests compare them)
//   variants     the loaded kernel units and their per-device state (function handle, resident clusters)
//   tensor maps  TMA descriptors, cached per (address, geometry): a pure function of its key
//   workspaces   the stream-K workspace and the L2-side claim counters, per device and stream
//   launch       one launch of a variant: launch geometry, GemmParams, cuLaunchKernelEx
//   plans        per-problem choice (variant, rasterization, hints) from Python's configs.select, cached here
//   ops          torch.ops.deepergemm.* (CUDA) and torch.ops.deepergemm_native.* (loading, developers' launches,
//                the L2-side probe)
//
// Plain host code: no <regex> (it was seen to crash under torch 2.11's runtime), no CUDA runtime calls, no c10/cuda
// headers (the current stream and the device guard come through c10's device-generic interface), so the binding
// links against torch's CPU libraries alone: CI builds and loads it too (tests/test_binding_cpu.py).
#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_strided.h>
#include <ATen/ops/zeros.h>
#include <c10/core/DeviceGuard.h>
#include <c10/core/Stream.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <torch/library.h>

#include <cuda.h>
#include <dlfcn.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstdio>
#include <map>
#include <memory>
#include <mutex>
#include <numeric>
#include <string>
#include <tuple>
#include <type_traits>
#include <unordered_map>
#include <vector>

#include "params.h"

namespace dgb {

using at::Tensor;
using std::optional;

// Error messages are built by plain string concatenation (cat), never through iostreams: formatting an integer
// through std::ostream (c10::str does, for a TORCH_CHECK message with several parts) crashed inside libstdc++'s
// locale code under torch 2.11's runtime, like <regex> did. TORCH_CHECK builds its message only on failure, and a
// single string argument reaches c10::Error as it is.
inline void append(std::string& out, const char* s) { out += s != nullptr ? s : "(null)"; }
inline void append(std::string& out, const std::string& s) { out += s; }
inline void append(std::string& out, c10::string_view s) { out.append(s.data(), s.size()); }
template <typename T, typename = std::enable_if_t<std::is_integral_v<T>>>
inline void append(std::string& out, T v) {
  out += std::to_string(v);
}
template <typename... Args>
std::string cat(const Args&... args) {
  std::string out;
  (append(out, args), ...);
  return out;
}

// =============================================================================================
// driver
// =============================================================================================
struct Driver {
  decltype(&::cuInit) init = nullptr;
  decltype(&::cuGetErrorString) error_string = nullptr;
  decltype(&::cuDeviceGet) device_get = nullptr;
  decltype(&::cuDeviceGetAttribute) device_attribute = nullptr;
  decltype(&::cuLibraryLoadData) library_load_data = nullptr;
  decltype(&::cuLibraryGetKernelCount) library_kernel_count = nullptr;
  decltype(&::cuLibraryEnumerateKernels) library_enumerate_kernels = nullptr;
  decltype(&::cuKernelGetFunction) kernel_function = nullptr;
  decltype(&::cuFuncSetAttribute) func_set_attribute = nullptr;
  decltype(&::cuFuncGetAttribute) func_get_attribute = nullptr;
  decltype(&::cuOccupancyMaxActiveClusters) max_active_clusters = nullptr;
  decltype(&::cuLaunchKernelEx) launch = nullptr;
  decltype(&::cuTensorMapEncodeTiled) encode_tiled = nullptr;
  decltype(&::cuStreamIsCapturing) stream_is_capturing = nullptr;
  decltype(&::cuCtxGetCurrent) ctx_get_current = nullptr;
  decltype(&::cuCtxSetCurrent) ctx_set_current = nullptr;
  decltype(&::cuDevicePrimaryCtxRetain) primary_ctx_retain = nullptr;
};

template <typename F>
void resolve(void* lib, F& fn, const char* name) {
  fn = reinterpret_cast<F>(dlsym(lib, name));
  TORCH_CHECK(fn != nullptr, cat("deepergemm: the CUDA driver (libcuda.so.1) has no ", name,
              " (a driver for CUDA 12.4 or newer is needed)"));
}

const Driver& driver() {
  static const Driver d = [] {
    Driver r;
    void* lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_GLOBAL);
    TORCH_CHECK(lib != nullptr, cat("deepergemm: cannot load the CUDA driver libcuda.so.1: ", dlerror()));
    resolve(lib, r.init, "cuInit");
    resolve(lib, r.error_string, "cuGetErrorString");
    resolve(lib, r.device_get, "cuDeviceGet");
    resolve(lib, r.device_attribute, "cuDeviceGetAttribute");
    resolve(lib, r.library_load_data, "cuLibraryLoadData");
    resolve(lib, r.library_kernel_count, "cuLibraryGetKernelCount");
    resolve(lib, r.library_enumerate_kernels, "cuLibraryEnumerateKernels");
    resolve(lib, r.kernel_function, "cuKernelGetFunction");
    resolve(lib, r.func_set_attribute, "cuFuncSetAttribute");
    resolve(lib, r.func_get_attribute, "cuFuncGetAttribute");
    resolve(lib, r.max_active_clusters, "cuOccupancyMaxActiveClusters");
    resolve(lib, r.launch, "cuLaunchKernelEx");
    resolve(lib, r.encode_tiled, "cuTensorMapEncodeTiled");
    resolve(lib, r.stream_is_capturing, "cuStreamIsCapturing");
    resolve(lib, r.ctx_get_current, "cuCtxGetCurrent");
    resolve(lib, r.ctx_set_current, "cuCtxSetCurrent");
    resolve(lib, r.primary_ctx_retain, "cuDevicePrimaryCtxRetain");
    return r;
  }();
  return d;
}

// The caller's current stream on a CUDA device (torch's, through c10's device-generic interface).
CUstream current_stream(int device) {
  const c10::Device dev(c10::DeviceType::CUDA, static_cast<c10::DeviceIndex>(device));
  return static_cast<CUstream>(c10::impl::getDeviceGuardImpl(c10::DeviceType::CUDA)->getStream(dev).native_handle());
}

void check_cu(CUresult res, const char* what) {
  if (res == CUDA_SUCCESS) return;
  const char* text = nullptr;
  driver().error_string(res, &text);
  TORCH_CHECK(false, cat("deepergemm: ", what, " failed: ", text != nullptr ? text : "unknown error", " (", static_cast<int>(res),
              ")"));
}

struct DeviceFacts {
  int sms = 0;
  int major = 0, minor = 0;
};

const DeviceFacts& device_facts(int index) {
  static std::mutex mutex;
  static std::map<int, DeviceFacts> facts;
  std::lock_guard<std::mutex> lock(mutex);
  auto found = facts.find(index);
  if (found != facts.end()) return found->second;
  const Driver& d = driver();
  check_cu(d.init(0), "cuInit");
  CUdevice dev;
  check_cu(d.device_get(&dev, index), "cuDeviceGet");
  DeviceFacts f;
  check_cu(d.device_attribute(&f.sms, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, dev), "cuDeviceGetAttribute");
  check_cu(d.device_attribute(&f.major, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, dev), "cuDeviceGetAttribute");
  check_cu(d.device_attribute(&f.minor, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, dev), "cuDeviceGetAttribute");
  return facts.emplace(index, f).first->second;
}

// The device's primary context, current on this thread (what the runtime, and so torch, uses): a thread that has
// made no runtime call yet has none, and the driver calls below need one.
void ensure_context(int index) {
  const Driver& d = driver();
  CUcontext ctx = nullptr;
  check_cu(d.ctx_get_current(&ctx), "cuCtxGetCurrent");
  if (ctx != nullptr) return;
  CUdevice dev;
  check_cu(d.device_get(&dev, index), "cuDeviceGet");
  check_cu(d.primary_ctx_retain(&ctx, dev), "cuDevicePrimaryCtxRetain");
  check_cu(d.ctx_set_current(ctx), "cuCtxSetCurrent");
}

// =============================================================================================
// rules: deepergemm/layouts.py's checks, in the same order and with the same messages and exception types
// (TORCH_CHECK_TYPE raises TypeError, TORCH_CHECK_VALUE ValueError)
// =============================================================================================
constexpr int64_t kTmaAlignBytes = 16;
constexpr int64_t kNAlign = 8;
constexpr int64_t kMaxGroupedRows = int64_t{1} << 25;
constexpr std::array<int64_t, 6> kPlacedSlabRows = {8, 16, 32, 64, 128, 256};

// str(torch.dtype)
std::string dtype_name(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return "torch.float32";
    case at::kDouble: return "torch.float64";
    case at::kHalf: return "torch.float16";
    case at::kBFloat16: return "torch.bfloat16";
    case at::kFloat8_e4m3fn: return "torch.float8_e4m3fn";
    case at::kFloat8_e5m2: return "torch.float8_e5m2";
    case at::kFloat8_e4m3fnuz: return "torch.float8_e4m3fnuz";
    case at::kFloat8_e5m2fnuz: return "torch.float8_e5m2fnuz";
    case at::kByte: return "torch.uint8";
    case at::kChar: return "torch.int8";
    case at::kShort: return "torch.int16";
    case at::kInt: return "torch.int32";
    case at::kLong: return "torch.int64";
    case at::kBool: return "torch.bool";
    default: {
      std::string name = c10::toString(t);
      std::transform(name.begin(), name.end(), name.begin(), [](unsigned char c) { return std::tolower(c); });
      return "torch." + name;
    }
  }
}

// str(tuple) of ints: "(2, 3)", "(4,)", "()"
std::string tuple_str(c10::IntArrayRef values) {
  std::string out = "(";
  for (size_t i = 0; i < values.size(); ++i) out += (i ? ", " : "") + std::to_string(values[i]);
  return out + (values.size() == 1 ? ",)" : ")");
}
std::string tuple_str(std::initializer_list<int64_t> values) {
  return tuple_str(c10::IntArrayRef(values.begin(), values.size()));
}

std::string hex_address(const void* p) {
  char text[32];
  std::snprintf(text, sizeof(text), "%#llx", static_cast<unsigned long long>(reinterpret_cast<uintptr_t>(p)));
  return text;
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
int64_t round_up(int64_t a, int64_t b) { return ceil_div(a, b) * b; }

void require_dtype(const char* name, const Tensor& t, std::initializer_list<at::ScalarType> allowed) {
  for (at::ScalarType s : allowed)
    if (t.scalar_type() == s) return;
  std::string want;
  for (at::ScalarType s : allowed) want += (want.empty() ? "" : " or ") + dtype_name(s);
  TORCH_CHECK_TYPE(false, cat(name, " must have dtype ", want, ", got ", dtype_name(t.scalar_type())));
}

void require_rank(const char* name, const Tensor& t, int64_t rank, const char* what) {
  TORCH_CHECK_VALUE(t.dim() == rank, cat(name, " must be ", rank, "-D ", what, ", got shape ", tuple_str(t.sizes())));
}

void require_tma_aligned(const char* name, const Tensor& t) {
  TORCH_CHECK_VALUE(reinterpret_cast<uintptr_t>(t.data_ptr()) % kTmaAlignBytes == 0, cat(name,
                    " data pointer must be ", kTmaAlignBytes, "-byte aligned (TMA), got address ",
                    hex_address(t.data_ptr()), " (a view at an odd offset?); call .clone() first"));
}

void require_k_major(const char* name, const Tensor& t) {
  const int64_t rows = t.size(0), k = t.size(1);
  if (rows == 0 || k == 0) return;
  TORCH_CHECK_VALUE(t.stride(1) == 1 || k <= 1, cat(name, " must be K-major (row-major, stride(1) == 1), got strides ",
                    tuple_str(t.strides()), "; call .contiguous() first"));
  TORCH_CHECK_VALUE(rows <= 1 || (t.stride(0) >= k && (t.stride(0) * t.element_size()) % kTmaAlignBytes == 0), cat(name,
                    " row stride must be >= K and a multiple of ", kTmaAlignBytes, " bytes, got stride(0)=",
                    t.stride(0), " for K=", k, "; call .contiguous() first"));
  require_tma_aligned(name, t);
}

void check_k(int64_t k) {
  TORCH_CHECK_VALUE(k != 0 && k % dg::kBlockK == 0, cat("K must be a positive multiple of ", dg::kBlockK, ", got K=", k));
}

using Named = std::pair<const char*, const Tensor*>;
void require_same_device(std::initializer_list<Named> named) {
  const Named* first = nullptr;
  for (const Named& n : named) {
    if (n.second == nullptr) continue;
    if (first == nullptr) {
      first = &n;
      continue;
    }
    TORCH_CHECK_VALUE(n.second->device() == first->second->device(), cat("all tensors must be on one device: ",
                      first->first, " is on ", first->second->device().str(), ", ", n.first, " is on ",
                      n.second->device().str()));
  }
}

void check_out_dtype(at::ScalarType out_dtype) {
  TORCH_CHECK_TYPE(out_dtype == at::kBFloat16 || out_dtype == at::kFloat, cat("out_dtype must be torch.bfloat16 or torch.float32, got ", dtype_name(out_dtype)));
}

// layouts._check_a_and_scales: what fp8_gemm and fp8_gemm_placed share; returns (M, K)
// k_mismatch(a's shape): the message when a's K is not k_b (the caller's words for where k_b comes from).
// scale_k: where the caller takes the 256-K recipe too (fp8_gemm), the recipe's K group (128 or 256) goes there.
template <typename KMismatch>
std::pair<int64_t, int64_t> check_a_and_scales(const Tensor& a, const Tensor& a_scales, const Tensor& b_scales, int64_t n,
                                               int64_t k_b, at::ScalarType out_dtype, const optional<Tensor>& bias,
                                               const KMismatch& k_mismatch, int64_t* scale_k = nullptr) {
  require_dtype("a", a, {at::kFloat8_e4m3fn});
  require_rank("a", a, 2, "(M, K)");
  const int64_t m = a.size(0), k = a.size(1);
  TORCH_CHECK_VALUE(k_b == k, k_mismatch(tuple_str(a.sizes())));
  check_k(k);
  TORCH_CHECK_VALUE(n % kNAlign == 0 && n != 0, cat("N (b.shape[0]) must be a positive multiple of ", kNAlign,
                    " (16-byte aligned output rows), got N=", n));
  require_dtype("a_scales", a_scales, {at::kFloat});
  require_dtype("b_scales", b_scales, {at::kFloat});
  // The 256-K recipe (scales per 256 of K) where the caller takes it: a_scales (M, K/256) says so.
  const bool looks_wide = k % (2 * dg::kBlockK) == 0 && a_scales.dim() == 2 && a_scales.size(1) == k / (2 * dg::kBlockK);
  const bool wide = scale_k != nullptr && looks_wide;
  const int64_t group = wide ? 2 * dg::kBlockK : dg::kBlockK, groups = k / group;
  if (scale_k != nullptr) *scale_k = group;
  const std::string also =
      scale_k == nullptr ? (looks_wide ? " (the 256-K recipe's scales: fp8_gemm with a bf16 or fp32 output only)" : "")
      : k % (2 * dg::kBlockK) != 0 ? std::string()
                                   : cat(" (or (M, K/256) = ", tuple_str({m, k / (2 * dg::kBlockK)}), " for the 256-K recipe)");
  const int64_t nb = ceil_div(n, dg::kBlockK);
  TORCH_CHECK_VALUE(!wide || !(b_scales.dim() == 2 && b_scales.size(0) == nb && b_scales.size(1) == k / dg::kBlockK),
                    cat("a_scales must have shape (M, K/128) = ", tuple_str({m, k / dg::kBlockK}), " to match b_scales ",
                        tuple_str(b_scales.sizes()), " (the 128 recipe), got ", tuple_str(a_scales.sizes()),
                        " (the 256-K recipe's; its b_scales are (ceil(N/128), K/256) = ", tuple_str({nb, groups}), ")"));
  TORCH_CHECK_VALUE(a_scales.dim() == 2 && a_scales.size(0) == m && a_scales.size(1) == groups, cat("a_scales must have shape (M, K/128) = ", tuple_str({m, k / dg::kBlockK}), also, ", got ",
                    tuple_str(a_scales.sizes())));
  TORCH_CHECK_VALUE(b_scales.dim() == 2 && b_scales.size(0) == ceil_div(n, dg::kBlockK) && b_scales.size(1) == groups, cat("b_scales must have shape (ceil(N/128), K/", group, ") = ", tuple_str({ceil_div(n, dg::kBlockK), groups}),
                    wide ? " (the 256-K recipe, as a_scales)" : "", ", got ", tuple_str(b_scales.sizes())));
  check_out_dtype(out_dtype);
  if (bias.has_value()) {
    require_dtype("bias", *bias, {at::kBFloat16, at::kHalf, at::kFloat});
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == n, cat("bias must have shape (N,) = (", n, ",), got ",
                      tuple_str(bias->sizes())));
  }
  require_same_device({{"a", &a}, {"a_scales", &a_scales}, {"b_scales", &b_scales},
                       {"bias", bias.has_value() ? &*bias : nullptr}});
  require_k_major("a", a);
  return {m, k};
}

// layouts.check_gemm_inputs; returns (M, N, K)
std::tuple<int64_t, int64_t, int64_t> check_gemm_inputs(const Tensor& a, const Tensor& a_scales, const Tensor& b,
                                                        const Tensor& b_scales, at::ScalarType out_dtype,
                                                        const optional<Tensor>& bias, int64_t* scale_k = nullptr) {
  require_dtype("b", b, {at::kFloat8_e4m3fn});
  require_rank("b", b, 2, "(N, K)");
  const int64_t n = b.size(0);
  auto [m, k] = check_a_and_scales(a, a_scales, b_scales, n, b.size(1), out_dtype, bias, [&](const std::string& a_shape) {
    return cat("a and b must share K (a is (M, K), b is (N, K)): got a ", a_shape, ", b ", tuple_str(b.sizes()));
  }, scale_k);
  require_same_device({{"a", &a}, {"b", &b}});
  require_k_major("b", b);
  return {m, n, k};
}

// layouts.check_gemm_fp8_out_inputs: fp8_gemm's rules (bf16 output), then N whole 128-column groups; returns (M, N, K)
std::tuple<int64_t, int64_t, int64_t> check_gemm_fp8_out_inputs(const Tensor& a, const Tensor& a_scales, const Tensor& b,
                                                                const Tensor& b_scales, const optional<Tensor>& bias) {
  auto mnk = check_gemm_inputs(a, a_scales, b, b_scales, at::kBFloat16, bias);
  const int64_t n = std::get<1>(mnk);
  TORCH_CHECK_VALUE(n % dg::kBlockK == 0, cat("N (b.shape[0]) must be a positive multiple of ", dg::kBlockK,
                    " for fp8 output (one scale per 1x128 group of an output row, as quantize_act's K), got N=", n));
  return mnk;
}

// layouts.check_gemm_swiglu_inputs: fp8_gemm's rules (bf16 output, no bias), then B's rows as gate and up
// interleaved per 128; returns (M, N, K), N = 2I
std::tuple<int64_t, int64_t, int64_t> check_gemm_swiglu_inputs(const Tensor& a, const Tensor& a_scales, const Tensor& b,
                                                               const Tensor& b_scales) {
  auto mnk = check_gemm_inputs(a, a_scales, b, b_scales, at::kBFloat16, std::nullopt);
  const int64_t n = std::get<1>(mnk);
  TORCH_CHECK_VALUE(n % (2 * dg::kBlockK) == 0, cat("N (b.shape[0]: gate and up rows interleaved per ", dg::kBlockK,
                    ") must be a positive multiple of ", 2 * dg::kBlockK, " for fp8_gemm_swiglu, got N=", n));
  return mnk;
}

// layouts.check_placed_inputs; returns (M, K)
std::pair<int64_t, int64_t> check_placed_inputs(const Tensor& a, const Tensor& a_scales, const Tensor& pool,
                                                const Tensor& slots, const Tensor& b_scales, int64_t n, int64_t slab_rows,
                                                int64_t split_rows, at::ScalarType out_dtype,
                                                const optional<Tensor>& bias, const optional<Tensor>& sm_side) {
  TORCH_CHECK_VALUE(std::find(kPlacedSlabRows.begin(), kPlacedSlabRows.end(), slab_rows) != kPlacedSlabRows.end(), cat("slab_rows must be one of (8, 16, 32, 64, 128, 256), got ", slab_rows));
  require_dtype("pool", pool, {at::kByte});
  require_dtype("slots", slots, {at::kInt});
  TORCH_CHECK_VALUE(pool.dim() == 2 && pool.size(1) == dg::kBlockK && pool.size(0) % slab_rows == 0 && pool.is_contiguous(), cat("pool must be a contiguous (slots * slab_rows, 128) uint8 tensor, got ", tuple_str(pool.sizes())));
  require_rank("slots", slots, 2, "(K/128, slabs)");
  TORCH_CHECK_VALUE(slots.is_contiguous(), "slots must be contiguous");
  TORCH_CHECK_VALUE(n > 0, cat("n (rows of B) must be a positive int, got ", n));
  TORCH_CHECK_VALUE(slots.size(1) * slab_rows >= round_up(n, 256) + 512, cat("slots must cover round_up(n, 256) + 512 rows of B (",
                    round_up(n, 256) + 512, "), got ", slots.size(1), " slabs of ", slab_rows));
  TORCH_CHECK_VALUE(0 <= split_rows && split_rows <= n, cat("split_rows must lie in [0, n=", n, "], got ", split_rows));
  const int64_t k_b = slots.size(0) * dg::kBlockK;
  auto mk = check_a_and_scales(a, a_scales, b_scales, n, k_b, out_dtype, bias, [&](const std::string& a_shape) {
    return cat("a must be (M, K) with K = 128 * slots.shape[0] = ", k_b, ", got ", a_shape);
  });
  require_same_device({{"a", &a}, {"pool", &pool}, {"slots", &slots}});
  require_tma_aligned("pool", pool);
  if (sm_side.has_value()) {
    require_dtype("sm_side", *sm_side, {at::kByte});
    TORCH_CHECK_VALUE(sm_side->dim() == 1 && sm_side->size(0) == dg::kSmSideEntries, cat("sm_side must have shape (256,) (the L2 side of each SM id), got ", tuple_str(sm_side->sizes())));
    require_same_device({{"a", &a}, {"sm_side", &*sm_side}});
  }
  return mk;
}

// layouts.check_weight_layout for grouped b: (groups, N, K)
void check_grouped_b(const Tensor& b, const Tensor& b_scales, int64_t k, int64_t* groups_out, int64_t* n_out) {
  require_dtype("b", b, {at::kFloat8_e4m3fn});
  require_rank("b", b, 3, "(groups, N, K)");
  const int64_t groups = b.size(0), n = b.size(1);
  TORCH_CHECK_VALUE(b.size(2) == k, cat("a and b must share K (b is (groups, N, K)): got K=", k, " for a, b ",
                    tuple_str(b.sizes())));
  TORCH_CHECK_VALUE(groups >= 1 && groups <= dg::kMaxGroups, cat("b.shape[0] (groups) must be 1..", dg::kMaxGroups, ", got ",
                    groups));
  TORCH_CHECK_VALUE(n % kNAlign == 0 && n != 0, cat("N (b.shape[1]) must be a positive multiple of ", kNAlign,
                    " (16-byte aligned output rows), got N=", n));
  TORCH_CHECK_VALUE(b.is_contiguous(), cat("b must be contiguous (groups, N, K), K-major, got strides ", tuple_str(b.strides()),
                    "; call .contiguous() first"));
  require_tma_aligned("b", b);
  require_dtype("b_scales", b_scales, {at::kFloat});
  const int64_t nb = ceil_div(n, dg::kBlockK), kb = k / dg::kBlockK;
  TORCH_CHECK_VALUE(b_scales.dim() == 3 && b_scales.size(0) == groups && b_scales.size(1) == nb && b_scales.size(2) == kb, cat("b_scales must have shape (groups, ceil(N/128), K/128) = ", tuple_str({groups, nb, kb}), ", got ",
                    tuple_str(b_scales.sizes())));
  *groups_out = groups;
  *n_out = n;
}

void check_group_counts(const char* name, const Tensor& t, int64_t groups) {
  require_dtype(name, t, {at::kInt});
  TORCH_CHECK_VALUE(t.dim() == 1 && t.size(0) == groups, cat(name, " must have shape (groups,) = (", groups, ",), got ",
                    tuple_str(t.sizes())));
}

void check_grouped_out(const Tensor& out, c10::IntArrayRef shape) {
  TORCH_CHECK_TYPE(out.scalar_type() == at::kBFloat16 || out.scalar_type() == at::kFloat, cat("out must have dtype torch.bfloat16 or torch.float32, got ", dtype_name(out.scalar_type())));
  TORCH_CHECK_VALUE(out.sizes() == shape, cat("out must have shape ", tuple_str(shape), ", got ", tuple_str(out.sizes())));
  TORCH_CHECK_VALUE(out.is_contiguous(), cat("out must be contiguous, got strides ", tuple_str(out.strides())));
  require_tma_aligned("out", out);
}

// layouts.check_grouped_contiguous_inputs (out: none for the SwiGLU form, which allocates its own); returns
// (M, N, K, groups)
std::array<int64_t, 4> check_grouped_contiguous_inputs(const Tensor& a, const Tensor& a_scales, const Tensor& b,
                                                       const Tensor& b_scales, const Tensor& group_sizes,
                                                       const Tensor* out) {
  require_dtype("a", a, {at::kFloat8_e4m3fn});
  require_rank("a", a, 2, "(M, K): the tokens of every group back to back");
  const int64_t m = a.size(0), k = a.size(1);
  check_k(k);
  TORCH_CHECK_VALUE(m < kMaxGroupedRows, cat("a.shape[0] (M) must be below ", kMaxGroupedRows, ", got ", m));
  int64_t groups, n;
  check_grouped_b(b, b_scales, k, &groups, &n);
  require_dtype("a_scales", a_scales, {at::kFloat});
  TORCH_CHECK_VALUE(a_scales.dim() == 2 && a_scales.size(0) == m && a_scales.size(1) == k / dg::kBlockK, cat("a_scales must have shape (M, K/128) = ", tuple_str({m, k / dg::kBlockK}), ", got ",
                    tuple_str(a_scales.sizes())));
  check_group_counts("group_sizes", group_sizes, groups);
  if (out != nullptr) {
    check_grouped_out(*out, {m, n});
    require_same_device({{"a", &a}, {"a_scales", &a_scales}, {"b", &b}, {"b_scales", &b_scales},
                         {"group_sizes", &group_sizes}, {"out", out}});
  } else {
    require_same_device({{"a", &a}, {"a_scales", &a_scales}, {"b", &b}, {"b_scales", &b_scales},
                         {"group_sizes", &group_sizes}});
  }
  require_k_major("a", a);
  return {m, n, k, groups};
}


// layouts.check_expected_m: >= 1, or >= 0 where 0 means M / groups (the contiguous SwiGLU form)
void check_expected_m(int64_t expected_m, bool zero_ok) {
  const int64_t least = zero_ok ? 0 : 1;
  TORCH_CHECK_VALUE(expected_m >= least, cat("expected_m must be an int >= ", least, " (the rows per group the tile "
                    "choice plans for", zero_ok ? "; 0: M / groups" : "", "), got ", expected_m));
}

// layouts.check_grouped_masked_inputs (out: none for the SwiGLU form); returns (groups, max_m, N, K)
std::array<int64_t, 4> check_grouped_masked_inputs(const Tensor& a, const Tensor& a_scales, const Tensor& b,
                                                   const Tensor& b_scales, const Tensor& masked_m, int64_t expected_m,
                                                   const Tensor* out) {
  require_dtype("a", a, {at::kFloat8_e4m3fn});
  require_rank("a", a, 3, "(groups, max_m, K)");
  const int64_t groups_a = a.size(0), max_m = a.size(1), k = a.size(2);
  check_k(k);
  int64_t groups, n;
  check_grouped_b(b, b_scales, k, &groups, &n);
  TORCH_CHECK_VALUE(groups_a == groups, cat("a and b must have the same number of groups: a ", tuple_str(a.sizes()), ", b ",
                    tuple_str(b.sizes())));
  TORCH_CHECK_VALUE(groups * max_m < kMaxGroupedRows, cat("groups * max_m must be below ", kMaxGroupedRows, ", got ", groups,
                    " * ", max_m));
  TORCH_CHECK_VALUE(a.is_contiguous(), cat("a must be contiguous (groups, max_m, K), got strides ", tuple_str(a.strides()),
                    "; call .contiguous() first"));
  require_tma_aligned("a", a);
  require_dtype("a_scales", a_scales, {at::kFloat});
  TORCH_CHECK_VALUE(a_scales.dim() == 3 && a_scales.size(0) == groups && a_scales.size(1) == max_m &&
                        a_scales.size(2) == k / dg::kBlockK, cat("a_scales must have shape (groups, max_m, K/128) = ", tuple_str({groups, max_m, k / dg::kBlockK}),
                    ", got ", tuple_str(a_scales.sizes())));
  check_group_counts("masked_m", masked_m, groups);
  check_expected_m(expected_m, false);
  if (out != nullptr) {
    check_grouped_out(*out, {groups, max_m, n});
    require_same_device({{"a", &a}, {"a_scales", &a_scales}, {"b", &b}, {"b_scales", &b_scales},
                         {"masked_m", &masked_m}, {"out", out}});
  } else {
    require_same_device({{"a", &a}, {"a_scales", &a_scales}, {"b", &b}, {"b_scales", &b_scales},
                         {"masked_m", &masked_m}});
  }
  return {groups, max_m, n, k};
}

// The grouped SwiGLU forms' extra rule: each group's N rows of b are its gate rows, then its up rows.
void check_swiglu_halves(int64_t n, const char* op) {
  TORCH_CHECK_VALUE(n % (2 * dg::kBlockK) == 0, cat("N (b.shape[1]: each group's gate rows, then its up rows) "
                    "must be a positive multiple of ", 2 * dg::kBlockK, " for ", op, ", got N=", n));
}

// layouts.to_act_scale_layout: M-major with a 16-byte aligned K-group stride, copied only when needed
bool is_act_scale_layout(const Tensor& s) {
  const int64_t m = s.size(0), groups = s.size(1);
  const bool aligned = reinterpret_cast<uintptr_t>(s.data_ptr()) % kTmaAlignBytes == 0;
  if (m <= 1 && groups <= 1) return aligned;
  const bool ok_m = s.stride(0) == 1 || m == 1;
  const bool ok_g = groups == 1 || (s.stride(1) >= m && s.stride(1) % 4 == 0);
  return ok_m && ok_g && aligned;
}

Tensor to_act_scale_layout(const Tensor& s) {
  if (is_act_scale_layout(s)) return s;
  const int64_t m = s.size(0);
  Tensor out = at::empty_strided({m, s.size(1)}, {1, round_up(m, 4)}, s.options());
  out.copy_(s);
  return out;
}

// =============================================================================================
// environment snapshot (pushed from Python: deepergemm/configs.py reads the switches once, and again on reload)
// =============================================================================================
struct Snapshot {
  std::string default_backend = "auto";  // $DEEPERGEMM_BACKEND, validated at use (the message names it)
};
std::mutex snapshot_mutex;
Snapshot snapshot;

Snapshot current_snapshot() {
  std::lock_guard<std::mutex> lock(snapshot_mutex);
  return snapshot;
}

enum class Backend { kPtx, kCublas, kReference };

bool is_backend_name(c10::string_view name) {
  return name == "auto" || name == "ptx" || name == "cublas" || name == "reference";
}

// ops.resolve_backend for CUDA tensors
Backend resolve_backend(c10::string_view backend, const at::Device& device) {
  TORCH_CHECK_VALUE(is_backend_name(backend), cat("backend must be one of ('auto', 'ptx', 'cublas', 'reference'), got '",
                    std::string(backend), "'"));
  std::string chosen(backend);
  if (chosen == "auto") {
    chosen = current_snapshot().default_backend;
    TORCH_CHECK_VALUE(is_backend_name(chosen), cat("environment variable DEEPERGEMM_BACKEND must be one of ('auto', 'ptx', 'cublas', 'reference'), got '",
                      chosen, "'"));
  }
  if (chosen == "cublas") return Backend::kCublas;
  if (chosen == "reference") return Backend::kReference;
  const DeviceFacts& facts = device_facts(device.index());
  const bool hopper = facts.major == 9 && facts.minor == 0;
  if (chosen == "auto") return hopper ? Backend::kPtx : Backend::kCublas;
  TORCH_CHECK_VALUE(hopper, cat("backend='ptx' needs an sm_90 (Hopper) GPU and a CUDA toolkit to build it; ", device.str(),
                    " has compute capability (", facts.major, ", ", facts.minor, ")"));
  return Backend::kPtx;
}

const char* backend_name(Backend b) {
  return b == Backend::kPtx ? "ptx" : b == Backend::kCublas ? "cublas" : "reference";
}

// =============================================================================================
// variants: kernel units loaded from cubins
// =============================================================================================
// configs.Variant's facts, in the order extension.py sends them (Variant.binding_info)
struct VariantInfo {
  int block_m, block_n, stages, acc, cluster_m, cluster_n, splits, math_wgs, grouping, smem_bytes, swapped, threads,
      epi_n, fp8_out;
  int cluster() const { return cluster_m * cluster_n * splits; }
};
constexpr int kVariantInfoFields = 14;

// A kernel unit: a cubin holding one kernel, loaded as a context-independent library.
struct Unit {
  std::string path;
  std::string blob;  // the cubin's bytes (kept: the driver may load the library lazily)
  CUlibrary library = nullptr;
  CUkernel kernel = nullptr;
  std::mutex mutex;
  std::map<int, CUfunction> functions;  // per device (its primary context)
};

void load_unit(Unit& u, const std::string& path) {
  u.path = path;
  // (stdio, not iostreams: see cat above)
  std::FILE* file = std::fopen(path.c_str(), "rb");
  TORCH_CHECK(file != nullptr, cat("deepergemm: cannot read the kernel unit ", path));
  char chunk[1 << 16];
  for (size_t got; (got = std::fread(chunk, 1, sizeof(chunk), file)) > 0;) u.blob.append(chunk, got);
  std::fclose(file);
  const Driver& d = driver();
  check_cu(d.init(0), "cuInit");
  check_cu(d.library_load_data(&u.library, u.blob.data(), nullptr, nullptr, 0, nullptr, nullptr, 0),
           ("cuLibraryLoadData(" + path + ")").c_str());
  unsigned count = 0;
  check_cu(d.library_kernel_count(&count, u.library), "cuLibraryGetKernelCount");
  TORCH_CHECK(count == 1, cat("deepergemm: the kernel unit ", path, " holds ", count, " kernels, expected one"));
  check_cu(d.library_enumerate_kernels(&u.kernel, 1, u.library), "cuLibraryEnumerateKernels");
}

// The unit's function on a device; `first_use` runs once per device (attributes, occupancy) under the unit's lock.
template <typename F>
CUfunction unit_function(Unit& u, int device, F first_use) {
  std::lock_guard<std::mutex> lock(u.mutex);
  auto found = u.functions.find(device);
  if (found != u.functions.end()) return found->second;
  ensure_context(device);
  CUfunction fn;
  check_cu(driver().kernel_function(&fn, u.kernel), "cuKernelGetFunction");
  first_use(fn);
  u.functions.emplace(device, fn);
  return fn;
}

struct LoadedVariant {
  VariantInfo info;
  Unit unit;
  std::map<int, int64_t> resident_clusters;  // per device (written under unit.mutex, on first use)
};

std::mutex variants_mutex;
std::vector<std::unique_ptr<LoadedVariant>> variants;  // id = index; never removed (ids stay valid)

int64_t load_variant(c10::string_view path_view, c10::IntArrayRef fields) {
  TORCH_CHECK_VALUE(static_cast<int>(fields.size()) == kVariantInfoFields, cat("deepergemm: load_variant takes ",
                    kVariantInfoFields, " variant fields, got ", fields.size()));
  const std::string path(path_view);
  {
    std::lock_guard<std::mutex> lock(variants_mutex);
    for (size_t i = 0; i < variants.size(); ++i)
      if (variants[i]->unit.path == path) return static_cast<int64_t>(i);
  }
  auto v = std::make_unique<LoadedVariant>();
  int* dst = &v->info.block_m;
  for (int i = 0; i < kVariantInfoFields; ++i) dst[i] = static_cast<int>(fields[i]);
  load_unit(v->unit, path);
  std::lock_guard<std::mutex> lock(variants_mutex);
  variants.push_back(std::move(v));
  return static_cast<int64_t>(variants.size() - 1);
}

LoadedVariant& variant_at(int64_t id) {
  std::lock_guard<std::mutex> lock(variants_mutex);
  TORCH_CHECK(id >= 0 && id < static_cast<int64_t>(variants.size()), cat("deepergemm: no loaded variant ", id));
  return *variants[id];
}

struct VariantOnDevice {
  CUfunction fn;
  int64_t resident_clusters;
};

// The variant's function on a device, its attributes set and its resident clusters counted on first use.
VariantOnDevice variant_on_device(LoadedVariant& v, int device, int sms) {
  const Driver& d = driver();
  CUfunction fn = unit_function(v.unit, device, [&](CUfunction f) {
    int max_threads = 0;
    check_cu(d.func_get_attribute(&max_threads, CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK, f), "cuFuncGetAttribute");
    TORCH_CHECK(max_threads == v.info.threads, cat("deepergemm: the kernel unit ", v.unit.path, " was built for ",
                max_threads, " threads per CTA, configs.py expects ", v.info.threads));
    check_cu(d.func_set_attribute(f, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, v.info.smem_bytes),
             "cuFuncSetAttribute(dynamic shared memory)");
    int64_t resident = sms / v.info.cluster();
    if (v.info.cluster() > 1) {
      CUlaunchConfig config = {};
      CUlaunchAttribute attr;
      attr.id = CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION;
      attr.value.clusterDim.x = v.info.cluster();
      attr.value.clusterDim.y = 1;
      attr.value.clusterDim.z = 1;
      config.gridDimX = static_cast<unsigned>(resident * v.info.cluster());
      config.gridDimY = config.gridDimZ = 1;
      config.blockDimX = v.info.threads;
      config.blockDimY = config.blockDimZ = 1;
      config.sharedMemBytes = v.info.smem_bytes;
      config.attrs = &attr;
      config.numAttrs = 1;
      int fits = 0;
      check_cu(d.max_active_clusters(&fits, f, &config), "cuOccupancyMaxActiveClusters");
      TORCH_CHECK(fits > 0, cat("deepergemm: no ", v.info.cluster(), "-CTA cluster of ", v.unit.path, " fits on the GPU"));
      resident = std::min<int64_t>(resident, fits);
    }
    v.resident_clusters[device] = resident;
  });
  std::lock_guard<std::mutex> lock(v.unit.mutex);
  return {fn, v.resident_clusters.at(device)};
}

// =============================================================================================
// tensor maps: cuTensorMapEncodeTiled is a pure function of its arguments, so a map is cached by all of them
// (address included): a freed and reused address with the same geometry gets the same, still correct, map
// =============================================================================================
struct MapKey {
  const void* base;
  uint64_t inner, outer, row_bytes;
  uint32_t box_inner, box_outer;
  int type, swizzle;
  bool operator==(const MapKey& o) const {
    return base == o.base && inner == o.inner && outer == o.outer && row_bytes == o.row_bytes &&
           box_inner == o.box_inner && box_outer == o.box_outer && type == o.type && swizzle == o.swizzle;
  }
};

struct MapSlot {
  MapKey key{};
  CUtensorMap map;
  bool used = false;
};

constexpr int kMapCacheSlots = 256;  // per thread, direct-mapped

CUtensorMap tensor_map_2d(const void* base, CUtensorMapDataType type, uint64_t inner, uint64_t outer, uint64_t row_bytes,
                          uint32_t box_inner, uint32_t box_outer, CUtensorMapSwizzle swizzle) {
  thread_local std::vector<MapSlot> cache(kMapCacheSlots);
  const MapKey key{base, inner, outer, row_bytes, box_inner, box_outer, static_cast<int>(type), static_cast<int>(swizzle)};
  uint64_t h = reinterpret_cast<uintptr_t>(base) >> 4;
  for (uint64_t v : {inner, outer, row_bytes, uint64_t{box_inner} << 32 | box_outer, uint64_t(key.type) << 8 | key.swizzle})
    h = (h ^ v) * 0x9E3779B97F4A7C15ull;
  MapSlot& slot = cache[(h >> 32) % kMapCacheSlots];
  if (slot.used && slot.key == key) return slot.map;
  const cuuint64_t dims[2] = {inner, outer};
  const cuuint64_t strides[1] = {row_bytes};
  const cuuint32_t box[2] = {box_inner, box_outer};
  const cuuint32_t elem_strides[2] = {1, 1};
  const CUresult res = driver().encode_tiled(&slot.map, type, 2, const_cast<void*>(base), dims, strides, box, elem_strides,
                                             CU_TENSOR_MAP_INTERLEAVE_NONE, swizzle, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                                             CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  slot.used = res == CUDA_SUCCESS;
  TORCH_CHECK(res == CUDA_SUCCESS, cat("deepergemm: cuTensorMapEncodeTiled failed (error ", static_cast<int>(res), ") for a ",
              outer, " x ", inner, " tensor with row stride ", row_bytes, " bytes"));
  slot.key = key;
  return slot.map;
}

// =============================================================================================
// workspaces: one per device and stream (launches on one stream run in order; two streams never share one).
// While a stream is captured into a CUDA graph, a fresh one: the graph owns it and replays its zeroing.
// =============================================================================================
bool capturing(CUstream stream) {
  CUstreamCaptureStatus status = CU_STREAM_CAPTURE_STATUS_NONE;
  check_cu(driver().stream_is_capturing(stream, &status), "cuStreamIsCapturing");
  return status != CU_STREAM_CAPTURE_STATUS_NONE;
}

using StreamKey = std::pair<int, uintptr_t>;
std::mutex workspaces_mutex;
std::map<StreamKey, Tensor> stream_k_workspaces, side_claim_counters;

// The stream-K tail's workspace (scheduler.cuh): a flag per CTA and math warpgroup, which every launch leaves at
// zero, then a slot of BLOCK_M x BLOCK_N fp32 partial sums per CTA.
Tensor stream_k_workspace(const VariantInfo& info, const at::Device& device, CUstream stream, int sms) {
  const int64_t flags = int64_t{sms} * info.math_wgs;
  const int64_t size = flags + int64_t{sms} * info.block_m * info.block_n;
  const auto options = at::TensorOptions().dtype(at::kInt).device(device);
  if (capturing(stream)) {
    Tensor fresh = at::empty({size}, options);
    fresh.narrow(0, 0, flags).zero_();
    return fresh;
  }
  std::lock_guard<std::mutex> lock(workspaces_mutex);
  Tensor& ws = stream_k_workspaces[{device.index(), reinterpret_cast<uintptr_t>(stream)}];
  if (!ws.defined() || ws.numel() < size) ws = at::zeros({size}, options);
  return ws;
}

// The L2-side slot counters (fp8_gemm.cuh's claim_side_slot): 3 int32 (+1 pad) that every launch leaves at zero.
Tensor side_claims_for(const at::Device& device, CUstream stream) {
  const auto options = at::TensorOptions().dtype(at::kInt).device(device);
  if (capturing(stream)) return at::zeros({4}, options);
  std::lock_guard<std::mutex> lock(workspaces_mutex);
  Tensor& claims = side_claim_counters[{device.index(), reinterpret_cast<uintptr_t>(stream)}];
  if (!claims.defined()) claims = at::zeros({4}, options);
  return claims;
}

// =============================================================================================
// launch
// =============================================================================================
struct LaunchArgs {
  LaunchArgs(const Tensor& a_, const Tensor& a_scales_, const Tensor& b_, const Tensor& b_scales_, Tensor& out_)
      : a(&a_), a_scales(&a_scales_), b(&b_), b_scales(&b_scales_), out(&out_) {}
  const Tensor* a;
  const Tensor* a_scales;  // in the kernel's M-major layout
  const Tensor* b;
  const Tensor* b_scales;  // contiguous
  Tensor* out;
  const Tensor* bias = nullptr;
  int bias_kind = dg::kBiasNone;
  int group_n = 16;
  int l2_hints = 0;  // dg::L2Priority of A | of B << 2
  bool stream_k = false;
  // grouped: b is (groups * N, K), b_scales (groups * ceil(N/128), K/128)
  const Tensor* group_rows = nullptr;
  int groups = 0;
  int group_stride = 0;
  // placed: b is the pool
  const Tensor* b_slots = nullptr;
  int slab_rows = 0;
  int n_placed = 0;
  // L2-side-aware schedule
  const Tensor* sm_side = nullptr;
  int side0_n_tiles = 0;
  bool pdl = false;
  void* trace_log = nullptr;
  // fp8-output variants: out is (M, N) fp8 e4m3, out_scales (M, N/128) fp32 M-major (layouts.empty_act_scales)
  Tensor* out_scales = nullptr;
  bool ue8m0 = false;
};

void launch(LoadedVariant& v, const LaunchArgs& x) {
  const VariantInfo& info = v.info;
  const Tensor& a = *x.a;
  const Tensor& b = *x.b;
  const Tensor& a_scales = *x.a_scales;
  const Tensor& b_scales = *x.b_scales;
  Tensor& out = *x.out;
  const int kBM = info.block_m, kBN = info.block_n, kClusterM = info.cluster_m, kClusterN = info.cluster_n;
  const int kCluster = info.cluster();
  const bool grouped = info.grouping != dg::kGroupNone, swapped = info.swapped != 0;
  TORCH_CHECK(grouped ? x.groups >= 1 && x.groups <= dg::kMaxGroups && x.group_stride > 0 : x.groups == 0, cat("deepergemm: this variant takes ", grouped ? "1..256 groups" : "no groups", ", got ", x.groups, " (stride ",
              x.group_stride, ")"));
  const bool placed = x.b_slots != nullptr;
  const int64_t m = a.size(0), k = a.size(1), n = placed ? x.n_placed : b.size(0) / (grouped ? x.groups : 1);
  TORCH_CHECK(k % dg::kBlockK == 0 && n % 8 == 0 && m > 0, cat("deepergemm: bad GEMM shape ", m, "x", n, "x", k));
  const int64_t out_n = info.fp8_out == 2 ? n / 2 : n;  // SwiGLU: h has half of B's rows as columns
  TORCH_CHECK(a.is_cuda() && a.stride(1) == 1 && b.stride(1) == 1 && out.is_contiguous() && b_scales.is_contiguous() &&
                  out.size(0) == m && out.size(1) == out_n,
              "deepergemm: a, b must be K-major, out (M, N) (SwiGLU: (M, N/2)) and b_scales contiguous");
  const int64_t k_blocks = k / dg::kBlockK;
  TORCH_CHECK(k_blocks >= info.splits, cat("deepergemm: this variant splits K in ", info.splits, " and needs K >= ",
              info.splits * dg::kBlockK, ", got K = ", k));
  // Scale columns: one per K block, or one per pair of K blocks (the 256-K recipe's scales: its pairs variants take
  // only those; any other variant takes either, each K block then reading its pair's scale). K/256 columns are told
  // from K/128 by their count (K >= 256).
  const bool pairs = info.acc == dg::kAccPairs;
  TORCH_CHECK(!pairs || k_blocks % 2 == 0, cat("deepergemm: the 256-K recipe needs K a multiple of 256, got K = ", k));
  const bool per_pair = pairs || (k_blocks % 2 == 0 && a_scales.dim() == 2 && a_scales.size(1) == k_blocks / 2);
  const int64_t scale_cols = per_pair ? k_blocks / 2 : k_blocks;
  TORCH_CHECK((a_scales.stride(0) == 1 || m == 1) && a_scales.size(1) == scale_cols &&
                  b_scales.size(b_scales.dim() - 1) == scale_cols,
              cat("deepergemm: a_scales must be M-major, and both scales have ", scale_cols, " columns (K/",
                  per_pair ? 256 : 128, ") for this variant"));
  const int64_t sa_stride = scale_cols > 1 ? a_scales.stride(1) : round_up(m, 4);
  TORCH_CHECK(!swapped || (!placed && x.sm_side == nullptr && !grouped),
              "deepergemm: swapped variants take a plain B, no L2 sides, no groups");
  const int device = a.device().index();
  const DeviceFacts& facts = device_facts(device);
  ensure_context(device);
  const VariantOnDevice pd = variant_on_device(v, device, facts.sms);
  const CUstream stream = current_stream(device);

  // The kernel's view: swapped, its M' rows (wgmma M side, A operand) are B's N rows and its N' columns the M
  // tokens; out stays (M, N) (the epilogue stores transposed).
  const Tensor& a_op = swapped ? b : a;
  const Tensor& b_op = swapped ? a : b;
  const int64_t km = swapped ? n : m, kn = swapped ? m : n;
  const CUtensorMap map_a = tensor_map_2d(a_op.data_ptr(), CU_TENSOR_MAP_DATA_TYPE_UINT8, k, km, a_op.stride(0),
                                          dg::kBlockK, kBM / kClusterN, CU_TENSOR_MAP_SWIZZLE_128B);  // a CTA's A slice
  // placed: boxes of gcd(slice, slab) rows, each from one slot; the CTA's slice has >= 8 rows. Grouped SwiGLU:
  // 128-row boxes, the tile's gate rows and its up rows N/2 further (producer.cuh's swiglu_half_row).
  const bool swiglu_halves = info.fp8_out == 2 && grouped;
  const int64_t b_box_rows = placed          ? std::gcd<int64_t>(kBN / kClusterM, x.slab_rows)
                             : swiglu_halves ? int64_t{dg::kBlockK}
                                             : kBN / kClusterM;
  if (placed) {
    const Tensor& slots = *x.b_slots;
    TORCH_CHECK(!grouped, "deepergemm: placed B needs a plain variant");
    TORCH_CHECK(x.slab_rows >= 8 && x.slab_rows <= 256 && (x.slab_rows & (x.slab_rows - 1)) == 0 && b.dim() == 2 &&
                    b.size(1) == dg::kBlockK && b.is_contiguous() && b.size(0) % x.slab_rows == 0 && slots.is_cuda() &&
                    slots.scalar_type() == at::kInt && slots.is_contiguous() && slots.dim() == 2 &&
                    slots.device() == a.device() && b.device() == a.device() && slots.size(0) == k_blocks &&
                    slots.size(1) * x.slab_rows >= ceil_div(ceil_div(n, kBN), kClusterN) * kClusterN * kBN &&
                    b_box_rows >= 8 && (kBN / kClusterM) / b_box_rows <= 32,
                "deepergemm: a placed B needs a contiguous (slots * slab_rows, 128) pool, slab_rows a power of two in "
                "8..256, and an int32 slot table (K/128, slabs) on a's device covering every N-tile");
  }
  const CUtensorMap map_b =
      placed ? tensor_map_2d(b.data_ptr(), CU_TENSOR_MAP_DATA_TYPE_UINT8, dg::kBlockK, b.size(0), dg::kBlockK, dg::kBlockK,
                             static_cast<uint32_t>(b_box_rows), CU_TENSOR_MAP_SWIZZLE_128B)
             : tensor_map_2d(b_op.data_ptr(), CU_TENSOR_MAP_DATA_TYPE_UINT8, k, b_op.size(0), b_op.stride(0), dg::kBlockK,
                             static_cast<uint32_t>(b_box_rows), CU_TENSOR_MAP_SWIZZLE_128B);  // a CTA's B slice
  // (swapped: the tile's tokens are its N' columns, a box of kBN scales)
  const CUtensorMap map_sa = tensor_map_2d(a_scales.data_ptr(), CU_TENSOR_MAP_DATA_TYPE_FLOAT32, m, scale_cols,
                                           sa_stride * 4, swapped ? kBN : kBM, 1, CU_TENSOR_MAP_SWIZZLE_NONE);
  // bf16 output: TMA stores of 16-row (one warp's) x epi_n-column slices, swizzled like the staging buffer. The
  // fp32 and the transposed (swapped) epilogues store from registers: no map (the kernel never reads this one).
  const bool out_fp32 = out.scalar_type() == at::kFloat;
  const bool fp8_out = info.fp8_out != 0;
  if (fp8_out) {
    TORCH_CHECK(out.scalar_type() == at::kFloat8_e4m3fn && out_n % dg::kBlockK == 0 && x.out_scales != nullptr &&
                    x.out_scales->scalar_type() == at::kFloat && x.out_scales->dim() == 2 &&
                    x.out_scales->size(0) == m && x.out_scales->size(1) == out_n / dg::kBlockK &&
                    x.out_scales->device() == a.device() && (x.out_scales->stride(0) == 1 || m == 1) &&
                    (out_n == dg::kBlockK || x.out_scales->stride(1) >= m) &&
                    (info.fp8_out != 2 || (n % (2 * dg::kBlockK) == 0 && x.bias_kind == dg::kBiasNone)),
                "deepergemm: an fp8-output variant writes an fp8 e4m3 out (M, N), N a multiple of 128, and fp32 "
                "out_scales (M, N/128), M-major, on a's device (SwiGLU: N/2 columns, N a multiple of 256, no bias)");
  } else {
    TORCH_CHECK(out.scalar_type() == at::kBFloat16 || out_fp32, "deepergemm: this variant writes bf16 or fp32");
  }
  CUtensorMap map_out{};
  if (!out_fp32 && !swapped && !fp8_out) {
    map_out = tensor_map_2d(out.data_ptr(), CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, n, m, n * 2, info.epi_n, dg::kEpiStoreRows,
                            info.epi_n == 64   ? CU_TENSOR_MAP_SWIZZLE_128B
                            : info.epi_n == 32 ? CU_TENSOR_MAP_SWIZZLE_64B
                                               : CU_TENSOR_MAP_SWIZZLE_32B);
  }

  dg::GemmParams p = {};
  p.m = static_cast<int>(m);  // the output's M and N (swapped, the kernel's view is N x M: producer.cuh's kernel_rows)
  p.n = static_cast<int>(n);
  p.k_blocks = static_cast<int>(k_blocks);
  p.scale_shift = per_pair ? 1 : 0;
  p.out = out.data_ptr();
  p.out_fp32 = out_fp32;
  p.b_scales = b_scales.data_ptr<float>();
  p.bias = x.bias_kind != dg::kBiasNone ? x.bias->data_ptr() : nullptr;
  p.bias_kind = x.bias_kind;
  p.group_n = x.group_n;
  p.l2_a = x.l2_hints & 3;         // dg::L2Priority of the A loads...
  p.l2_b = (x.l2_hints >> 2) & 3;  // ...and of the B loads
  p.pdl = x.pdl ? 1 : 0;
  p.b_slots = placed ? x.b_slots->data_ptr<int>() : nullptr;
  p.b_slot_stride = placed ? static_cast<int>(x.b_slots->size(1)) : 0;
  p.b_slab_shift = placed ? __builtin_ctz(static_cast<unsigned>(x.slab_rows)) : 0;
  p.b_box_rows = static_cast<int>(b_box_rows);
  p.groups = x.groups;
  p.group_stride = x.group_stride;
  p.trace_log = x.trace_log;
  if (fp8_out) {
    p.out_scales = x.out_scales->data_ptr<float>();
    p.out_scale_stride = static_cast<int>(out_n > dg::kBlockK ? x.out_scales->stride(1) : round_up(m, 4));
    p.out_ue8m0 = x.ue8m0 ? 1 : 0;
  }
  if (grouped) {
    const Tensor& rows = *x.group_rows;
    TORCH_CHECK(rows.is_cuda() && rows.scalar_type() == at::kInt && rows.numel() == x.groups && rows.is_contiguous() &&
                    b.size(0) == x.groups * n && (info.grouping != dg::kGroupMasked || m == x.groups * x.group_stride), cat("deepergemm: grouped GEMM needs group_rows (", x.groups, ",) int32 contiguous on the GPU, b (groups * N, K)"
                " and, masked, a (groups * max_m, K)"));
    p.group_rows = rows.data_ptr<int>();
  }

  // One unit = cluster_m x cluster_n tiles (scheduler.cuh; with split-K one tile for `splits` CTAs); one cluster per
  // unit, at most as many clusters as fit on the GPU at once. Grouped: the kernel counts its tiles from the device's
  // row counts; the grid takes the most there can be (every group's rows may start a tile of their own, and a pair's
  // rounding add one), idle CTAs leave at once.
  const int64_t m_tiles = !grouped ? ceil_div(km, kBM)
                          : info.grouping == dg::kGroupMasked
                              ? int64_t{x.groups} * dg::group_tiles(x.group_stride, kBM, kClusterM)
                              : ceil_div(m, kBM) + int64_t{x.groups} * kClusterM;
  const int64_t m_units = ceil_div(m_tiles, kClusterM);
  const int64_t units = m_units * ceil_div(kn, int64_t{kBN} * kClusterN);
  // Stream-K (scheduler.cuh), when asked for, in the loops that can start or end a tile's sums from a workspace slot
  // (one partial set, the pairs' included, not grouped, not SwiGLU). With fewer units than resident clusters it is a
  // fill: the grid takes every resident cluster and each cuts its part out of the units' K blocks (at least one
  // apiece; the pairs cut on pairs of K blocks: granule 2).
  const bool stream_k_built = x.stream_k && info.splits == 1 && (info.acc == dg::kAccSingle || pairs) &&
                              !grouped && info.fp8_out != 2;
  const int64_t granule = dg::stream_k_granule(pairs);
  const bool fill = stream_k_built && dg::stream_k_fill_fits(units, pd.resident_clusters, k_blocks, granule);
  const int64_t clusters = fill ? int64_t{pd.resident_clusters} : std::min<int64_t>(units, pd.resident_clusters);
  // L2-side-aware scheduling (scheduler.cuh's SideProblem): N-tiles [0, side0_n_tiles) to side 0, the clusters split
  // between the sides in proportion to their units, each side with its own stream-K tail.
  const bool by_side = x.sm_side != nullptr;
  int64_t side_units[2] = {units, 0}, side_clusters[2] = {clusters, 0};
  Tensor claims;
  if (by_side) {
    const Tensor& sm_side = *x.sm_side;
    const int64_t n_tiles = ceil_div(n, kBN);
    TORCH_CHECK(!grouped && sm_side.is_cuda() && sm_side.scalar_type() == at::kByte &&
                    sm_side.numel() == dg::kSmSideEntries && sm_side.device() == a.device() && x.side0_n_tiles > 0 &&
                    x.side0_n_tiles < n_tiles && x.side0_n_tiles % kClusterN == 0 && clusters >= 2, cat("deepergemm: L2-side scheduling needs a plain variant, a (256,) uint8 SM side table, side 0's N-tiles a "
                "multiple of the cluster's N (",
                kClusterN, ") in (0, ", n_tiles, "), and two clusters or more; got ", x.side0_n_tiles, " tiles, ",
                clusters, " clusters"));
    side_units[0] = m_units * (x.side0_n_tiles / kClusterN);
    side_units[1] = units - side_units[0];
    side_clusters[0] = dg::side0_clusters_for(clusters, side_units[0], units);
    side_clusters[1] = clusters - side_clusters[0];
    claims = side_claims_for(a.device(), stream);
    p.sm_side = sm_side.data_ptr<uint8_t>();
    p.side_claims = claims.data_ptr<int>();
    p.side0_clusters = static_cast<int>(side_clusters[0]);
    p.side0_n_tiles = x.side0_n_tiles;
  }
  // The stream-K units (params.h): a tail only if the units leave the last wave part-filled (that wave's units and
  // one full wave more, so each cluster's range is >= 1 tile), or a fill's every unit.
  const int sk_units[2] = {dg::stream_k_units(side_units[0], side_clusters[0], k_blocks, granule),
                           by_side ? dg::stream_k_units(side_units[1], side_clusters[1], k_blocks, granule) : 0};
  Tensor workspace;
  if (stream_k_built && (sk_units[0] > 0 || sk_units[1] > 0)) {
    workspace = stream_k_workspace(info, a.device(), stream, facts.sms);
    TORCH_CHECK(clusters * kCluster <= facts.sms, "deepergemm: the stream-K grid outgrew the workspace");
    p.sk_units = sk_units[0];
    p.side1_sk_units = sk_units[1];
    p.sk_flags = workspace.data_ptr<int>();  // zero between launches
    p.sk_partials = reinterpret_cast<float*>(workspace.data_ptr<int>() + int64_t{facts.sms} * info.math_wgs);
  }

  CUlaunchAttribute attrs[2];
  attrs[0].id = CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION;
  attrs[0].value.clusterDim.x = kCluster;
  attrs[0].value.clusterDim.y = 1;
  attrs[0].value.clusterDim.z = 1;
  // pdl: programmatic dependent launch, this kernel's prologue overlaps the previous kernel's tail (the kernel
  // waits for it in griddepcontrol.wait before touching global memory)
  attrs[1].id = CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
  attrs[1].value.programmaticStreamSerializationAllowed = 1;
  CUlaunchConfig config = {};
  config.gridDimX = static_cast<unsigned>(clusters * kCluster);
  config.gridDimY = config.gridDimZ = 1;
  config.blockDimX = info.threads;
  config.blockDimY = config.blockDimZ = 1;
  config.sharedMemBytes = info.smem_bytes;
  config.hStream = stream;
  config.attrs = attrs;
  config.numAttrs = x.pdl ? 2 : 1;
  void* params[] = {const_cast<CUtensorMap*>(&map_a), const_cast<CUtensorMap*>(&map_b), const_cast<CUtensorMap*>(&map_sa),
                    const_cast<CUtensorMap*>(&map_out), &p};
  check_cu(driver().launch(&config, pd.fn, params, nullptr), "cuLaunchKernelEx");
}

// =============================================================================================
// plans: which variant, rasterization and hints run a problem. Chosen by Python (deepergemm/kernels.py, through the
// op deepergemm::_plan: configs.select and the kernel unit's loading) on a problem's first call, cached here.
// =============================================================================================
enum PlanKind : int64_t {
  kPlanPlain = 0, kPlanPlaced = 1, kPlanContiguous = 2, kPlanMasked = 3, kPlanFp8Out = 4, kPlanSwiglu = 5,
  kPlanRecipe256 = 6, kPlanGroupedSwiglu = 7, kPlanMaskedSwiglu = 8
};

struct Plan {
  int64_t variant;
  int group_n, l2_hints;
  bool stream_k;
  int side0_n_tiles;  // placed, side-aware: N-tiles of side 0 (0: the usual order)
  bool pdl;
  bool unfused;  // fp8 output / SwiGLU: the bf16 GEMM of this plan, then the Triton steps (configs.fused_epilogue_pays)
};
constexpr int kPlanFields = 7;

using PlanKey = std::array<int64_t, 9>;  // kind, device, m, n, k, groups, rows, split_rows, side_aware
struct PlanKeyHash {
  size_t operator()(const PlanKey& key) const {
    uint64_t h = 0;
    for (int64_t v : key) h = (h ^ static_cast<uint64_t>(v)) * 0x9E3779B97F4A7C15ull;
    return static_cast<size_t>(h ^ (h >> 29));
  }
};
std::mutex plans_mutex;
std::unordered_map<PlanKey, Plan, PlanKeyHash> plans;
constexpr size_t kMaxPlans = 1 << 16;

Plan plan_for(PlanKey key) {
  {
    std::lock_guard<std::mutex> lock(plans_mutex);
    auto found = plans.find(key);
    if (found != plans.end()) return found->second;
  }
  // (not under the lock: Python takes the GIL, and may build a kernel unit)
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("deepergemm::_plan", "")
                       .typed<std::vector<int64_t>(int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                                                   bool)>();
  const std::vector<int64_t> f = op.call(key[0], key[1], key[2], key[3], key[4], key[5], key[6], key[7], key[8] != 0);
  TORCH_CHECK(static_cast<int>(f.size()) == kPlanFields, cat("deepergemm: _plan returned ", f.size(), " fields, expected ",
              kPlanFields));
  const Plan plan{f[0], static_cast<int>(f[1]), static_cast<int>(f[2]), f[3] != 0, static_cast<int>(f[4]), f[5] != 0,
                  f[6] != 0};
  std::lock_guard<std::mutex> lock(plans_mutex);
  if (plans.size() >= kMaxPlans) plans.clear();
  plans.emplace(key, plan);
  return plan;
}

void clear_plans() {
  std::lock_guard<std::mutex> lock(plans_mutex);
  plans.clear();
}

// =============================================================================================
// ops: torch.ops.deepergemm.* on CUDA tensors (schemas, CPU and fake kernels: deepergemm/ops.py)
// =============================================================================================
// The Python implementation of an op, for the backends that are Python (cuBLAS through torch._scaled_mm, the
// reference): deepergemm/ops.py registers it as deepergemm::_<op>_python with the op's schema.
c10::OperatorHandle python_impl(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "");
}

int bias_kind_of(const optional<Tensor>& bias) {
  if (!bias.has_value()) return dg::kBiasNone;
  return bias->scalar_type() == at::kFloat ? dg::kBiasF32 : dg::kBiasBF16;
}

Tensor gemm_into_new_output(const Plan& plan, const Tensor& a, const Tensor& a_scales, const Tensor& b,
                            const Tensor& b_scales, int64_t n, at::ScalarType out_dtype, const optional<Tensor>& bias,
                            const Tensor* slots, int64_t slab_rows, const optional<Tensor>& sm_side) {
  const Tensor sa = to_act_scale_layout(a_scales);
  const Tensor sb = b_scales.is_contiguous() ? b_scales : b_scales.contiguous();
  optional<Tensor> bias_k;
  if (bias.has_value()) {
    // fp16 bias: the kernel reads fp32 or bf16
    bias_k = bias->scalar_type() == at::kHalf ? bias->to(at::kFloat) : bias->contiguous();
  }
  Tensor out = at::empty({a.size(0), n}, a.options().dtype(out_dtype));
  LaunchArgs x(a, sa, b, sb, out);
  x.bias = bias_k.has_value() ? &*bias_k : nullptr;
  x.bias_kind = bias_kind_of(bias_k);
  x.group_n = plan.group_n;
  x.l2_hints = plan.l2_hints;
  x.stream_k = plan.stream_k;
  x.pdl = plan.pdl;
  if (slots != nullptr) {
    x.b_slots = slots;
    x.slab_rows = static_cast<int>(slab_rows);
    x.n_placed = static_cast<int>(n);
    if (plan.side0_n_tiles > 0) {
      x.sm_side = &*sm_side;
      x.side0_n_tiles = plan.side0_n_tiles;
    }
  }
  launch(variant_at(plan.variant), x);
  return out;
}

Tensor fp8_gemm(const Tensor& a, const Tensor& a_scales, const Tensor& b, const Tensor& b_scales, at::ScalarType out_dtype,
                const optional<Tensor>& bias, c10::string_view backend) {
  int64_t scale_k = dg::kBlockK;
  auto [m, n, k] = check_gemm_inputs(a, a_scales, b, b_scales, out_dtype, bias, &scale_k);
  const Backend chosen = resolve_backend(backend, a.device());
  if (m == 0) return at::empty({m, n}, a.options().dtype(out_dtype));
  if (chosen != Backend::kPtx) {
    static auto slow = python_impl("deepergemm::_fp8_gemm_python")
                           .typed<Tensor(const Tensor&, const Tensor&, const Tensor&, const Tensor&, at::ScalarType,
                                         const optional<Tensor>&, c10::string_view)>();
    return slow.call(a, a_scales, b, b_scales, out_dtype, bias, backend_name(chosen));
  }
  c10::DeviceGuard guard(a.device());
  if (scale_k != dg::kBlockK) {
    // The 256-K recipe: its pairs variant where the plan has one (one promotion per 256 of K), else the 128 recipe's
    // kernel reading each K block's pair scale (the product of the scales repeated per 128, exactly).
    const Plan plan = plan_for({kPlanRecipe256, a.device().index(), m, n, k, 0, 0, 0, 0});
    return gemm_into_new_output(plan, a, a_scales, b, b_scales, n, out_dtype, bias, nullptr, 0, std::nullopt);
  }
  const Plan plan = plan_for({kPlanPlain, a.device().index(), m, n, k, 0, 0, 0, 0});
  return gemm_into_new_output(plan, a, a_scales, b, b_scales, n, out_dtype, bias, nullptr, 0, std::nullopt);
}

// quantize_act's (M, N/128) fp32 scales: M-major, each column 16-byte aligned (layouts.empty_act_scales).
Tensor empty_act_scales(int64_t m, int64_t n, const at::TensorOptions& options) {
  return at::empty_strided({m, n / dg::kBlockK}, {1, round_up(m, 4)}, options.dtype(at::kFloat));
}

// The unfused steps after a bf16 GEMM output y: quantize_act(y), or with SwiGLU quantize_act(swiglu(y)), y's columns
// then gate and up interleaved per 128 (the Triton kernels: the bits the fused epilogues reproduce).
std::tuple<Tensor, Tensor> quantize_bf16_output(const Tensor& y, bool swiglu, bool ue8m0) {
  static auto swiglu_op = python_impl("deepergemm::swiglu").typed<Tensor(const Tensor&)>();
  static auto quantize_op =
      python_impl("deepergemm::quantize_act").typed<std::tuple<Tensor, Tensor>(const Tensor&, bool, int64_t)>();
  return quantize_op.call(swiglu ? swiglu_op.call(y) : y, ue8m0, dg::kBlockK);
}

// The quantized-output launches (fp8 output: mode 1, SwiGLU: mode 2, the variant's fp8_out field): q (M, out_n)
// fp8 e4m3 and its fp32 scales (M, out_n / 128), M-major, as quantize_act returns them.
std::tuple<Tensor, Tensor> launch_quantized_output(PlanKind kind, int mode, const Tensor& a, const Tensor& a_scales,
                                                   const Tensor& b, const Tensor& b_scales, int64_t m, int64_t n,
                                                   int64_t k, int64_t out_n, const optional<Tensor>& bias, bool ue8m0) {
  c10::DeviceGuard guard(a.device());
  const Plan plan = m == 0 ? Plan{} : plan_for({kind, a.device().index(), m, n, k, 0, 0, 0, 0});
  if (plan.unfused) {  // where fusing does not pay: the bf16 GEMM, then the Triton steps (the same bits)
    const Tensor y = gemm_into_new_output(plan, a, a_scales, b, b_scales, n, at::kBFloat16, bias, nullptr, 0, std::nullopt);
    return quantize_bf16_output(y, mode == 2, ue8m0);
  }
  Tensor q = at::empty({m, out_n}, a.options().dtype(at::kFloat8_e4m3fn));
  Tensor scales = empty_act_scales(m, out_n, a.options());
  if (m == 0) return {q, scales};
  const Tensor sa = to_act_scale_layout(a_scales);
  const Tensor sb = b_scales.is_contiguous() ? b_scales : b_scales.contiguous();
  optional<Tensor> bias_k;
  if (bias.has_value()) bias_k = bias->scalar_type() == at::kHalf ? bias->to(at::kFloat) : bias->contiguous();
  LaunchArgs x(a, sa, b, sb, q);
  x.bias = bias_k.has_value() ? &*bias_k : nullptr;
  x.bias_kind = bias_kind_of(bias_k);
  x.group_n = plan.group_n;
  x.l2_hints = plan.l2_hints;
  x.stream_k = plan.stream_k;  // (SwiGLU plans: never)
  x.pdl = plan.pdl;
  x.out_scales = &scales;
  x.ue8m0 = ue8m0;
  LoadedVariant& v = variant_at(plan.variant);
  TORCH_CHECK(v.info.fp8_out == mode, cat("deepergemm: _plan returned a variant of output mode ", v.info.fp8_out,
                                           ", not ", mode));
  launch(v, x);
  return {q, scales};
}

// fp8 output: the GEMM's output rounded to bf16 and quantized per 1x128 group in the epilogue (q, scales), as
// quantize_act returns them.
std::tuple<Tensor, Tensor> fp8_gemm_fp8_out(const Tensor& a, const Tensor& a_scales, const Tensor& b,
                                            const Tensor& b_scales, const optional<Tensor>& bias, bool ue8m0,
                                            c10::string_view backend) {
  auto [m, n, k] = check_gemm_fp8_out_inputs(a, a_scales, b, b_scales, bias);
  const Backend chosen = resolve_backend(backend, a.device());
  if (chosen != Backend::kPtx) {
    static auto slow = python_impl("deepergemm::_fp8_gemm_fp8_out_python")
                           .typed<std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                                             const optional<Tensor>&, bool, c10::string_view)>();
    return slow.call(a, a_scales, b, b_scales, bias, ue8m0, backend_name(chosen));
  }
  return launch_quantized_output(kPlanFp8Out, 1, a, a_scales, b, b_scales, m, n, k, n, bias, ue8m0);
}

// SwiGLU: quantize_act(swiglu(the bf16 GEMM)) of a gate/up weight interleaved per 128 rows, in one kernel (q, scales).
std::tuple<Tensor, Tensor> fp8_gemm_swiglu(const Tensor& a, const Tensor& a_scales, const Tensor& b,
                                           const Tensor& b_scales, bool ue8m0, c10::string_view backend) {
  auto [m, n, k] = check_gemm_swiglu_inputs(a, a_scales, b, b_scales);
  const Backend chosen = resolve_backend(backend, a.device());
  if (chosen != Backend::kPtx) {
    static auto slow = python_impl("deepergemm::_fp8_gemm_swiglu_python")
                           .typed<std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                                             bool, c10::string_view)>();
    return slow.call(a, a_scales, b, b_scales, ue8m0, backend_name(chosen));
  }
  return launch_quantized_output(kPlanSwiglu, 2, a, a_scales, b, b_scales, m, n, k, n / 2, std::nullopt, ue8m0);
}

Tensor sm_side_table(int64_t device) {
  static auto op = python_impl("deepergemm::_sm_side_table").typed<Tensor(int64_t)>();
  return op.call(device);
}

Tensor fp8_gemm_placed(const Tensor& a, const Tensor& a_scales, const Tensor& pool, const Tensor& slots,
                       const Tensor& b_scales, int64_t n, int64_t slab_rows, int64_t split_rows, at::ScalarType out_dtype,
                       const optional<Tensor>& bias, const optional<Tensor>& sm_side, bool side_aware,
                       c10::string_view backend) {
  auto [m, k] = check_placed_inputs(a, a_scales, pool, slots, b_scales, n, slab_rows, split_rows, out_dtype, bias, sm_side);
  const Backend chosen = resolve_backend(backend, a.device());
  if (m == 0) return at::empty({m, n}, a.options().dtype(out_dtype));
  if (chosen != Backend::kPtx) {  // cuBLAS and the reference read a plain B: Python gathers it (slow, for checks)
    static auto slow = python_impl("deepergemm::_fp8_gemm_placed_python")
                           .typed<Tensor(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, int64_t,
                                         int64_t, int64_t, at::ScalarType, const optional<Tensor>&,
                                         const optional<Tensor>&, bool, c10::string_view)>();
    return slow.call(a, a_scales, pool, slots, b_scales, n, slab_rows, split_rows, out_dtype, bias, sm_side, side_aware,
                     backend_name(chosen));
  }
  c10::DeviceGuard guard(a.device());
  const Plan plan = plan_for({kPlanPlaced, a.device().index(), m, n, k, 0, 0, split_rows, side_aware ? 1 : 0});
  optional<Tensor> sides = sm_side;
  if (plan.side0_n_tiles > 0 && !sides.has_value()) sides = sm_side_table(a.device().index());
  return gemm_into_new_output(plan, a, a_scales, pool, b_scales, n, out_dtype, bias, &slots, slab_rows, sides);
}

// ops.resolve_grouped_backend: cuBLAS has no block-scaled grouped GEMM ("auto" falls back to the reference)
Backend resolve_grouped_backend(c10::string_view backend, const at::Device& device) {
  TORCH_CHECK_VALUE(backend != "cublas",
                    "backend='cublas' has no grouped GEMM (torch._scaled_mm has no block-scaled grouped form); use "
                    "'auto', 'ptx' or 'reference'");
  const Backend chosen = resolve_backend(backend, device);
  return chosen == Backend::kCublas ? Backend::kReference : chosen;
}

// out2: bf16/fp32, or with out_scales the grouped SwiGLU's fp8 h (a SwiGLU variant's plan)
void grouped_launch(const Plan& plan, int grouping, const Tensor& a2, const Tensor& a_scales2, const Tensor& b,
                    const Tensor& b_scales, const Tensor& group_rows, int64_t group_stride, Tensor& out2,
                    Tensor* out_scales = nullptr, bool ue8m0 = false) {
  const int64_t groups = b.size(0), n = b.size(1), k = b.size(2);
  const Tensor sa = to_act_scale_layout(a_scales2);
  const Tensor b2 = b.view({groups * n, k});
  const Tensor sb = (b_scales.is_contiguous() ? b_scales : b_scales.contiguous()).view({-1, b_scales.size(-1)});
  const Tensor rows = group_rows.is_contiguous() ? group_rows : group_rows.contiguous();
  LaunchArgs x(a2, sa, b2, sb, out2);
  x.group_n = plan.group_n;
  x.l2_hints = plan.l2_hints;
  x.pdl = plan.pdl;
  x.group_rows = &rows;
  x.groups = static_cast<int>(groups);
  x.group_stride = static_cast<int>(group_stride);
  x.out_scales = out_scales;
  x.ue8m0 = ue8m0;
  LoadedVariant& v = variant_at(plan.variant);
  TORCH_CHECK(v.info.grouping == grouping && (v.info.fp8_out == 2) == (out_scales != nullptr),
              "deepergemm: _plan returned a variant of another grouping or output");
  launch(v, x);
}

constexpr int64_t kGroupedMAlignment = 128;  // layouts.GROUPED_M_ALIGNMENT

void m_grouped_fp8_gemm_contiguous(const Tensor& a, const Tensor& a_scales, const Tensor& b, const Tensor& b_scales,
                                   const Tensor& group_sizes, Tensor& out, bool zero_padding, c10::string_view backend) {
  auto [m, n, k, groups] = check_grouped_contiguous_inputs(a, a_scales, b, b_scales, group_sizes, &out);
  const Backend chosen = resolve_grouped_backend(backend, a.device());
  if (chosen != Backend::kPtx) {
    static auto slow = python_impl("deepergemm::_m_grouped_fp8_gemm_contiguous_python")
                           .typed<void(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, Tensor&,
                                       bool, c10::string_view)>();
    slow.call(a, a_scales, b, b_scales, group_sizes, out, zero_padding, backend_name(chosen));
    return;
  }
  if (zero_padding) out.zero_();
  if (m == 0) return;
  c10::DeviceGuard guard(a.device());
  const int64_t rows_hint = std::max<int64_t>(1, ceil_div(m, groups));
  const Plan plan = plan_for({kPlanContiguous, a.device().index(), m, n, k, groups, rows_hint, 0, 0});
  grouped_launch(plan, dg::kGroupContiguous, a, a_scales, b, b_scales, group_sizes, kGroupedMAlignment, out);
}

void m_grouped_fp8_gemm_masked(const Tensor& a, const Tensor& a_scales, const Tensor& b, const Tensor& b_scales,
                               const Tensor& masked_m, int64_t expected_m, Tensor& out, c10::string_view backend) {
  auto [groups, max_m, n, k] = check_grouped_masked_inputs(a, a_scales, b, b_scales, masked_m, expected_m, &out);
  const Backend chosen = resolve_grouped_backend(backend, a.device());
  if (chosen != Backend::kPtx) {
    static auto slow = python_impl("deepergemm::_m_grouped_fp8_gemm_masked_python")
                           .typed<void(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, int64_t,
                                       Tensor&, c10::string_view)>();
    slow.call(a, a_scales, b, b_scales, masked_m, expected_m, out, backend_name(chosen));
    return;
  }
  if (max_m == 0) return;
  c10::DeviceGuard guard(a.device());
  // the groups' rows back to back: one (groups * max_m)-row problem whose tiles the kernel takes per group
  const int64_t rows = groups * max_m;
  const int64_t rows_hint = std::max<int64_t>(1, std::min(expected_m, max_m));
  const Plan plan = plan_for({kPlanMasked, a.device().index(), rows, n, k, groups, rows_hint, 0, 0});
  Tensor out2 = out.view({rows, n});
  grouped_launch(plan, dg::kGroupMasked, a.view({rows, k}), a_scales.reshape({rows, k / dg::kBlockK}), b, b_scales,
                 masked_m, max_m, out2);
}

// The grouped SwiGLU forms' launch on rows (the groups' rows back to back: contiguous segments, or masked groups
// of max_m rows): q (rows, N/2) fp8 and its scales, M-major over all rows. Only the groups' real rows are written.
// Fused unless the plan says otherwise; then the grouped bf16 GEMM, its halves interleaved per 128, and the Triton
// steps (the same bits).
std::tuple<Tensor, Tensor> grouped_swiglu_launch(PlanKind kind, int grouping, const Tensor& a2, const Tensor& a_scales2,
                                                 const Tensor& b, const Tensor& b_scales, const Tensor& group_rows,
                                                 int64_t group_stride, int64_t rows_hint, bool ue8m0) {
  const int64_t rows = a2.size(0), k = a2.size(1), groups = b.size(0), n = b.size(1);
  Tensor q = at::empty({rows, n / 2}, a2.options().dtype(at::kFloat8_e4m3fn));
  Tensor scales = empty_act_scales(rows, n / 2, a2.options());
  if (rows == 0) return {q, scales};
  c10::DeviceGuard guard(a2.device());
  const Plan plan = plan_for({kind, a2.device().index(), rows, n, k, groups, rows_hint, 0, 0});
  if (plan.unfused) {
    Tensor y = at::empty({rows, n}, a2.options().dtype(at::kBFloat16));
    grouped_launch(plan, grouping, a2, a_scales2, b, b_scales, group_rows, group_stride, y);
    return quantize_bf16_output(
        y.view({rows, 2, n / (2 * dg::kBlockK), dg::kBlockK}).transpose(1, 2).reshape({rows, n}), true, ue8m0);
  }
  grouped_launch(plan, grouping, a2, a_scales2, b, b_scales, group_rows, group_stride, q, &scales, ue8m0);
  return {q, scales};
}

// Grouped SwiGLU, contiguous: quantize_act(swiglu(the grouped bf16 GEMM)) of stacked experts' gate/up weights, each
// group's N rows in halves (gate, then up), in one kernel: q (M, N/2) fp8 and its scales.
// expected_m: the real rows per group the tile choice plans for (0: M / groups, padding included).
std::tuple<Tensor, Tensor> m_grouped_fp8_gemm_contiguous_swiglu(const Tensor& a, const Tensor& a_scales,
                                                                const Tensor& b, const Tensor& b_scales,
                                                                const Tensor& group_sizes, int64_t expected_m,
                                                                bool ue8m0, c10::string_view backend) {
  auto [m, n, k, groups] = check_grouped_contiguous_inputs(a, a_scales, b, b_scales, group_sizes, nullptr);
  check_swiglu_halves(n, "m_grouped_fp8_gemm_contiguous_swiglu");
  check_expected_m(expected_m, true);
  const Backend chosen = resolve_grouped_backend(backend, a.device());
  if (chosen != Backend::kPtx) {
    static auto slow = python_impl("deepergemm::_m_grouped_fp8_gemm_contiguous_swiglu_python")
                           .typed<std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                                             const Tensor&, int64_t, bool, c10::string_view)>();
    return slow.call(a, a_scales, b, b_scales, group_sizes, expected_m, ue8m0, backend_name(chosen));
  }
  const int64_t rows_hint = std::max<int64_t>(1, expected_m > 0 ? expected_m : ceil_div(m, groups));
  return grouped_swiglu_launch(kPlanGroupedSwiglu, dg::kGroupContiguous, a, a_scales, b, b_scales, group_sizes,
                               kGroupedMAlignment, rows_hint, ue8m0);
}

// Grouped SwiGLU, masked: q (groups, max_m, N/2) fp8 and scales (groups, max_m, N/256), a view of M-major scales
// over the groups' rows back to back (m_grouped_fp8_gemm_masked takes it as is). Rows past masked_m are not written.
std::tuple<Tensor, Tensor> m_grouped_fp8_gemm_masked_swiglu(const Tensor& a, const Tensor& a_scales, const Tensor& b,
                                                            const Tensor& b_scales, const Tensor& masked_m,
                                                            int64_t expected_m, bool ue8m0,
                                                            c10::string_view backend) {
  auto [groups, max_m, n, k] = check_grouped_masked_inputs(a, a_scales, b, b_scales, masked_m, expected_m, nullptr);
  check_swiglu_halves(n, "m_grouped_fp8_gemm_masked_swiglu");
  TORCH_CHECK_VALUE(max_m % 4 == 0, cat("a.shape[1] (max_m) must be a multiple of 4 for m_grouped_fp8_gemm_masked_swiglu "
                    "(each group's A scales start on 16 bytes, as the kernel's scale loads need), got ", max_m));
  const Backend chosen = resolve_grouped_backend(backend, a.device());
  if (chosen != Backend::kPtx) {
    static auto slow = python_impl("deepergemm::_m_grouped_fp8_gemm_masked_swiglu_python")
                           .typed<std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                                             const Tensor&, int64_t, bool, c10::string_view)>();
    return slow.call(a, a_scales, b, b_scales, masked_m, expected_m, ue8m0, backend_name(chosen));
  }
  const int64_t rows = groups * max_m;
  auto [q, scales] = grouped_swiglu_launch(kPlanMaskedSwiglu, dg::kGroupMasked, a.view({rows, k}),
                                           a_scales.reshape({rows, k / dg::kBlockK}), b, b_scales, masked_m, max_m,
                                           std::max<int64_t>(1, std::min(expected_m, max_m)), ue8m0);
  return {q.view({groups, max_m, n / 2}), scales.view({groups, max_m, n / (2 * dg::kBlockK)})};
}

// =============================================================================================
// torch.ops.deepergemm_native.*: what deepergemm/extension.py and kernels.py call
// =============================================================================================
// One launch of a given loaded variant (the tests' and developers' path: no plan, no input rules beyond the
// kernel's own guards; inputs already in the kernel's layouts).
void launch_variant(int64_t variant, const Tensor& a, const Tensor& a_scales, const Tensor& b, const Tensor& b_scales,
                    Tensor& out, const optional<Tensor>& bias, int64_t bias_kind, int64_t group_n, int64_t l2_hints,
                    bool stream_k, const optional<Tensor>& group_rows, int64_t group_stride,
                    const optional<Tensor>& b_slots, int64_t slab_rows, int64_t n_placed, const optional<Tensor>& sm_side,
                    int64_t side0_n_tiles, bool pdl, const optional<Tensor>& trace_log, const optional<Tensor>& out_scales,
                    bool ue8m0) {
  c10::DeviceGuard guard(a.device());
  LaunchArgs x(a, a_scales, b, b_scales, out);
  x.bias = bias.has_value() ? &*bias : nullptr;
  x.bias_kind = static_cast<int>(bias_kind);
  TORCH_CHECK(bias_kind == dg::kBiasNone || bias.has_value(), cat("deepergemm: bias_kind ", bias_kind, " without a bias"));
  x.group_n = static_cast<int>(group_n);
  x.l2_hints = static_cast<int>(l2_hints);
  x.stream_k = stream_k;
  x.group_rows = group_rows.has_value() ? &*group_rows : nullptr;
  x.groups = group_rows.has_value() ? static_cast<int>(group_rows->numel()) : 0;
  x.group_stride = static_cast<int>(group_stride);
  x.b_slots = b_slots.has_value() ? &*b_slots : nullptr;
  x.slab_rows = static_cast<int>(slab_rows);
  x.n_placed = static_cast<int>(n_placed);
  x.sm_side = sm_side.has_value() ? &*sm_side : nullptr;
  x.side0_n_tiles = static_cast<int>(side0_n_tiles);
  x.pdl = pdl;
  x.trace_log = trace_log.has_value() ? trace_log->data_ptr() : nullptr;
  Tensor scales = out_scales.has_value() ? *out_scales : Tensor();
  x.out_scales = out_scales.has_value() ? &scales : nullptr;
  x.ue8m0 = ue8m0;
  launch(variant_at(variant), x);
}

// The L2-side probe (ptx/l2_probe.cu, a unit of its own; deepergemm/l2_sides.py): one CTA of 32 threads per entry of
// smid, on the current stream. rotate < 0: cycles (ctas, chunks), every CTA probes every chunk; rotate >= 0: cycles
// (chunks,), each chunk probed by one CTA. Cycles are uint32 stored as int32.
std::mutex probes_mutex;
std::vector<std::unique_ptr<Unit>> probes;

int64_t load_probe(c10::string_view path_view) {
  const std::string path(path_view);
  std::lock_guard<std::mutex> lock(probes_mutex);
  for (size_t i = 0; i < probes.size(); ++i)
    if (probes[i]->path == path) return static_cast<int64_t>(i);
  auto u = std::make_unique<Unit>();
  load_unit(*u, path);
  probes.push_back(std::move(u));
  return static_cast<int64_t>(probes.size() - 1);
}

void l2_probe(int64_t probe, const Tensor& buf, const Tensor& offsets, int64_t reps, Tensor& cycles, Tensor& smid,
              int64_t smem_bytes, int64_t rotate) {
  TORCH_CHECK(buf.is_cuda() && offsets.is_cuda() && cycles.is_cuda() && smid.is_cuda(),
              "deepergemm l2_probe: every tensor must be on the GPU");
  TORCH_CHECK(buf.scalar_type() == at::kInt && offsets.scalar_type() == at::kLong && cycles.scalar_type() == at::kInt &&
                  smid.scalar_type() == at::kInt,
              "deepergemm l2_probe: bad dtypes (buf, cycles, smid int32; offsets int64)");
  TORCH_CHECK(offsets.is_contiguous() && cycles.is_contiguous() && smid.is_contiguous() && smid.numel() > 0,
              "deepergemm l2_probe: offsets, cycles and smid must be contiguous, smid not empty");
  if (rotate < 0) {
    TORCH_CHECK(cycles.dim() == 2 && cycles.size(0) == smid.numel() && cycles.size(1) == offsets.numel(),
                "deepergemm l2_probe: cycles must be (ctas, chunks) when rotate < 0");
  } else {
    TORCH_CHECK(cycles.dim() == 1 && cycles.size(0) == offsets.numel(),
                "deepergemm l2_probe: cycles must be (chunks,) when rotate >= 0");
  }
  TORCH_CHECK(reps > 0 && rotate < (int64_t{1} << 30), "deepergemm l2_probe: reps must be > 0, rotate < 2^30");
  Unit* unit;
  {
    std::lock_guard<std::mutex> lock(probes_mutex);
    TORCH_CHECK(probe >= 0 && probe < static_cast<int64_t>(probes.size()), cat("deepergemm: no loaded probe ", probe));
    unit = probes[probe].get();
  }
  c10::DeviceGuard guard(buf.device());
  const int device = buf.device().index();
  ensure_context(device);
  CUfunction fn = unit_function(*unit, device, [](CUfunction) {});
  check_cu(driver().func_set_attribute(fn, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, static_cast<int>(smem_bytes)),
           "cuFuncSetAttribute(dynamic shared memory)");
  const uint32_t* buf_p = reinterpret_cast<const uint32_t*>(buf.data_ptr<int>());
  const int64_t* offsets_p = offsets.data_ptr<int64_t>();
  int chunks = static_cast<int>(offsets.numel()), reps_i = static_cast<int>(reps), rotate_i = static_cast<int>(rotate);
  uint32_t zero = 0;
  uint32_t* cycles_p = reinterpret_cast<uint32_t*>(cycles.data_ptr<int>());
  int* smid_p = smid.data_ptr<int>();
  void* params[] = {&buf_p, &offsets_p, &chunks, &reps_i, &rotate_i, &zero, &cycles_p, &smid_p};
  CUlaunchConfig config = {};
  config.gridDimX = static_cast<unsigned>(smid.numel());
  config.gridDimY = config.gridDimZ = 1;
  config.blockDimX = 32;
  config.blockDimY = config.blockDimZ = 1;
  config.sharedMemBytes = static_cast<unsigned>(smem_bytes);
  config.hStream = current_stream(device);
  check_cu(driver().launch(&config, fn, params, nullptr), "cuLaunchKernelEx(l2_probe)");
}

void configure(c10::string_view default_backend) {
  {
    std::lock_guard<std::mutex> lock(snapshot_mutex);
    snapshot.default_backend = std::string(default_backend);
  }
  clear_plans();
}

Tensor side_claims_of_current_stream(int64_t device) {
  return side_claims_for(at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(device)),
                         current_stream(static_cast<int>(device)));
}

// The current stream's stream-K workspace (empty before its first stream-K launch): tests check its flags are zero.
Tensor stream_k_workspace_of_current_stream(int64_t device) {
  const auto index = static_cast<c10::DeviceIndex>(device);
  std::lock_guard<std::mutex> lock(workspaces_mutex);
  auto found = stream_k_workspaces.find({index, reinterpret_cast<uintptr_t>(current_stream(index))});
  return found != stream_k_workspaces.end() ? found->second
                                            : at::empty({0}, at::TensorOptions().dtype(at::kInt).device(at::kCUDA, index));
}

int64_t loaded_variants() {
  std::lock_guard<std::mutex> lock(variants_mutex);
  return static_cast<int64_t>(variants.size());
}

int64_t cached_plans() {
  std::lock_guard<std::mutex> lock(plans_mutex);
  return static_cast<int64_t>(plans.size());
}

}  // namespace dgb

TORCH_LIBRARY(deepergemm_native, m) {
  m.def("load_variant(str path, int[] info) -> int", &dgb::load_variant);
  m.def("load_probe(str path) -> int", &dgb::load_probe);
  m.def("l2_probe(int probe, Tensor buf, Tensor offsets, int reps, Tensor(a!) cycles, Tensor(b!) smid, int smem_bytes, "
        "int rotate) -> ()");
  m.def("configure(str default_backend) -> ()", &dgb::configure);
  m.def("clear_plans() -> ()", &dgb::clear_plans);
  m.def("loaded_variants() -> int", &dgb::loaded_variants);
  m.def("cached_plans() -> int", &dgb::cached_plans);
  m.def("side_claims(int device) -> Tensor", &dgb::side_claims_of_current_stream);
  m.def("stream_k_workspace(int device) -> Tensor", &dgb::stream_k_workspace_of_current_stream);
  m.def("launch(int variant, Tensor a, Tensor a_scales, Tensor b, Tensor b_scales, Tensor(a!) out, Tensor? bias, "
        "int bias_kind, int group_n, int l2_hints, bool stream_k, Tensor? group_rows, int group_stride, Tensor? b_slots, "
        "int slab_rows, int n_placed, Tensor? sm_side, int side0_n_tiles, bool pdl, Tensor? trace_log, "
        "Tensor(b!)? out_scales, bool ue8m0) -> ()");
}

TORCH_LIBRARY_IMPL(deepergemm_native, CUDA, m) {
  m.impl("launch", &dgb::launch_variant);
  m.impl("l2_probe", &dgb::l2_probe);
}

TORCH_LIBRARY_IMPL(deepergemm, CUDA, m) {
  m.impl("fp8_gemm", &dgb::fp8_gemm);
  m.impl("fp8_gemm_placed", &dgb::fp8_gemm_placed);
  m.impl("fp8_gemm_fp8_out", &dgb::fp8_gemm_fp8_out);
  m.impl("fp8_gemm_swiglu", &dgb::fp8_gemm_swiglu);
  m.impl("m_grouped_fp8_gemm_contiguous_swiglu", &dgb::m_grouped_fp8_gemm_contiguous_swiglu);
  m.impl("m_grouped_fp8_gemm_masked_swiglu", &dgb::m_grouped_fp8_gemm_masked_swiglu);
  m.impl("m_grouped_fp8_gemm_contiguous", &dgb::m_grouped_fp8_gemm_contiguous);
  m.impl("m_grouped_fp8_gemm_masked", &dgb::m_grouped_fp8_gemm_masked);
}
