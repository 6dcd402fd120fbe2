// Host side of one GEMM variant: tensor maps, launch configuration, and the function Python calls.
// The variant (DG_BM, DG_BN, DG_STAGES, DG_ACC, DG_CLUSTER_M, DG_CLUSTER_N, DG_SPLIT_K, DG_MATH_WGS, DG_GROUPED, DG_SWAP) is fixed at compile time by deepergemm/extension.py,
// one extension module per variant. Python has already validated every input (deepergemm/layouts.py);
// the checks here only guard against a caller that bypassed it. Plain host code (no <regex>: it was
// seen to crash under torch 2.11's runtime).
#include <cuda_runtime.h>
#include <cudaTypedefs.h>
#include <torch/extension.h>

#include <algorithm>
#include <cstdint>
#include <numeric>

#include "fp8_gemm.cuh"

#ifndef DG_BM
#error "compile with -DDG_BM=.. -DDG_BN=.. -DDG_STAGES=.. -DDG_ACC=.. -DDG_CLUSTER_M=.. -DDG_CLUSTER_N=.. -DDG_SPLIT_K=.. -DDG_MATH_WGS=.. -DDG_GROUPED=.."
#endif

namespace {

constexpr int kBM = DG_BM, kBN = DG_BN, kStages = DG_STAGES, kClusterM = DG_CLUSTER_M, kClusterN = DG_CLUSTER_N;
constexpr int kSplitK = DG_SPLIT_K;                     // CTAs sharing one tile along K
constexpr int kCluster = kClusterM * kClusterN * kSplitK;  // CTAs per cluster
constexpr int kAcc = DG_ACC;  // dg::AccMode
constexpr int kMathWGs = DG_MATH_WGS;  // math warpgroups (1 only on 64-row tiles)
constexpr int kGrouped = DG_GROUPED;   // dg::GroupMode: plain, m-grouped contiguous or m-grouped masked
#ifndef DG_SWAP
#define DG_SWAP 0
#endif
constexpr int kSwap = DG_SWAP;  // swapped (small M): the kernel computes out^T = B A^T, B's rows on the wgmma M side
using Traits = dg::GemmTraits<kBM, kBN, kStages, kSplitK, kMathWGs, kGrouped>;
using Layout = typename Traits::Layout;
constexpr auto kKernel =
    dg::fp8_gemm_kernel<kBM, kBN, kStages, kAcc, kClusterM, kClusterN, kSplitK, kMathWGs, kGrouped, kSwap>;

#define DG_CUDA_CHECK(expr)                                                                   \
  do {                                                                                        \
    cudaError_t err_ = (expr);                                                                \
    TORCH_CHECK(err_ == cudaSuccess, "deepergemm: ", #expr, " failed: ", cudaGetErrorString(err_)); \
  } while (0)

// CUDA 13 only exposes the versioned driver prototype: fetch the 12.0 ABI of cuTensorMapEncodeTiled.
PFN_cuTensorMapEncodeTiled_v12000 encode_tiled() {
  static PFN_cuTensorMapEncodeTiled_v12000 fn = nullptr;
  if (fn == nullptr) {
    void* entry = nullptr;
    cudaDriverEntryPointQueryResult found;
    DG_CUDA_CHECK(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &entry, 12000, cudaEnableDefault, &found));
    TORCH_CHECK(found == cudaDriverEntryPointSuccess && entry != nullptr,
                "deepergemm: the CUDA driver has no cuTensorMapEncodeTiled (driver too old for TMA?)");
    fn = reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(entry);
  }
  return fn;
}

// 2-D row-major tensor: `inner` contiguous elements per row, `outer` rows `row_bytes` apart.
CUtensorMap tensor_map_2d(const void* base, CUtensorMapDataType type, uint64_t inner, uint64_t outer,
                          uint64_t row_bytes, uint32_t box_inner, uint32_t box_outer, CUtensorMapSwizzle swizzle) {
  CUtensorMap map;
  const cuuint64_t dims[2] = {inner, outer};
  const cuuint64_t strides[1] = {row_bytes};
  const cuuint32_t box[2] = {box_inner, box_outer};
  const cuuint32_t elem_strides[2] = {1, 1};
  const CUresult res = encode_tiled()(&map, type, 2, const_cast<void*>(base), dims, strides, box, elem_strides,
                                      CU_TENSOR_MAP_INTERLEAVE_NONE, swizzle, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                                      CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  TORCH_CHECK(res == CUDA_SUCCESS, "deepergemm: cuTensorMapEncodeTiled failed (error ", static_cast<int>(res),
              ") for a ", outer, " x ", inner, " tensor with row stride ", row_bytes, " bytes");
  return map;
}

}  // namespace

// out = (a * a_scales) @ (b * b_scales)^T (+ bias), written into `out` (M, N) bf16 or fp32.
// a_scales: (M, K/128) fp32 with strides (1, M_pad), M_pad % 4 == 0. bias_kind: 0 none, 1 fp32, 2 bf16.
// stream: the caller's current CUDA stream (passed from Python: no torch CUDA headers needed here).
// Grouped variants (scheduler.cuh): b is (groups * N, K) and b_scales (groups * ceil(N/128), K/128);
// group_rows (groups,) int32 on the device, group_stride the alignment (contiguous) or max_m (masked). Plain
// variants take groups = 0.
void fp8_gemm(const at::Tensor& a, const at::Tensor& a_scales, const at::Tensor& b, const at::Tensor& b_scales,
              at::Tensor& out, const at::Tensor& bias, int64_t bias_kind, int64_t num_sms, int64_t group_n, int64_t l2_hints,
              const at::Tensor& stream_k_workspace, const at::Tensor& group_rows, int64_t groups, int64_t group_stride,
              const at::Tensor& b_slots, int64_t b_slab_rows, int64_t n_placed, const at::Tensor& sm_side,
              const at::Tensor& side_claims, int64_t side0_n_tiles, int64_t pdl, int64_t stream) {
  TORCH_CHECK(kGrouped == dg::kGroupNone ? groups == 0 : groups >= 1 && groups <= dg::kMaxGroups && group_stride > 0,
              "deepergemm: this variant takes ", kGrouped == dg::kGroupNone ? "no groups" : "1..256 groups", ", got ",
              groups, " (stride ", group_stride, ")");
  // L2-side placement: b is the pool (rows of 128 bytes), its slabs found through b_slots (fp8_gemm.cuh)
  const bool placed = b_slots.numel() > 0;
  const int64_t m = a.size(0), k = a.size(1), n = placed ? n_placed : b.size(0) / (groups > 0 ? groups : 1);
  TORCH_CHECK(k % dg::kBlockK == 0 && n % 8 == 0 && m > 0, "deepergemm: bad GEMM shape ", m, "x", n, "x", k);
  TORCH_CHECK(a.stride(1) == 1 && b.stride(1) == 1 && out.is_contiguous() && b_scales.is_contiguous(),
              "deepergemm: a, b must be K-major and out, b_scales contiguous");
  const int64_t k_blocks = k / dg::kBlockK;
  TORCH_CHECK(k_blocks >= kSplitK, "deepergemm: this variant splits K in ", kSplitK, " and needs K >= ",
              kSplitK * dg::kBlockK, ", got K = ", k);
  const int64_t sa_stride = k_blocks > 1 ? a_scales.stride(1) : (m + 3) / 4 * 4;
  TORCH_CHECK(a_scales.stride(0) == 1 || m == 1, "deepergemm: a_scales must be M-major");
  // The kernel's view: swapped, its M' rows (wgmma M side, A operand) are B's N rows and its N' columns the M
  // tokens; out stays (M, N) (the epilogue stores transposed).
  TORCH_CHECK(!kSwap || (b_slots.numel() == 0 && side_claims.numel() == 0 && groups == 0),
              "deepergemm: swapped variants take a plain B, no L2 sides, no groups");
  const at::Tensor& a_op = kSwap ? b : a;
  const at::Tensor& b_op = kSwap ? a : b;
  const int64_t km = kSwap ? n : m, kn = kSwap ? m : n;

  const CUtensorMap map_a = tensor_map_2d(a_op.data_ptr(), CU_TENSOR_MAP_DATA_TYPE_UINT8, k, km, a_op.stride(0), dg::kBlockK,
                                          kBM / kClusterN, CU_TENSOR_MAP_SWIZZLE_128B);  // a CTA's A slice
  // (grouped: every group's N rows, one after the other)
  // (placed: boxes of gcd(slice, slab) rows, each from one slot; the CTA's slice has >= 8 rows)
  const int64_t b_box_rows = placed ? std::gcd<int64_t>(kBN / kClusterM, b_slab_rows) : kBN / kClusterM;
  if (placed) {
    const int64_t k_blocks_ = k / dg::kBlockK;
    TORCH_CHECK(dg::kProducers == 3 && kGrouped == dg::kGroupNone, "deepergemm: placed B needs a plain variant built "
                "with three producers");
    TORCH_CHECK(b_slab_rows >= 16 && b_slab_rows <= 256 && (b_slab_rows & (b_slab_rows - 1)) == 0 && b.dim() == 2 && b.size(1) == dg::kBlockK &&
                    b.is_contiguous() && b.size(0) % b_slab_rows == 0 && b_slots.is_cuda() &&
                    b_slots.scalar_type() == at::kInt && b_slots.is_contiguous() && b_slots.dim() == 2 &&
                    b_slots.device() == a.device() && b.device() == a.device() && b_slots.size(0) == k_blocks_ &&
                    b_slots.size(1) * b_slab_rows >= ((n + kBN - 1) / kBN + kClusterN - 1) / kClusterN * kClusterN * kBN &&
                    b_box_rows >= 8 && (kBN / kClusterM) / b_box_rows <= 32,
                "deepergemm: a placed B needs a contiguous (slots * slab_rows, 128) pool, slab_rows a power of two in 16..256, and an "
                "int32 slot table (K/128, slabs) on a's device covering every N-tile");
  }
  const CUtensorMap map_b =
      placed ? tensor_map_2d(b.data_ptr(), CU_TENSOR_MAP_DATA_TYPE_UINT8, dg::kBlockK, b.size(0), dg::kBlockK,
                             dg::kBlockK, static_cast<uint32_t>(b_box_rows), CU_TENSOR_MAP_SWIZZLE_128B)
             : tensor_map_2d(b_op.data_ptr(), CU_TENSOR_MAP_DATA_TYPE_UINT8, k, b_op.size(0), b_op.stride(0), dg::kBlockK,
                             kBN / kClusterM, CU_TENSOR_MAP_SWIZZLE_128B);  // a CTA's B slice
  // (swapped: the tile's tokens are its N' columns, a box of kBN scales)
  const CUtensorMap map_sa = tensor_map_2d(a_scales.data_ptr(), CU_TENSOR_MAP_DATA_TYPE_FLOAT32, m, k_blocks,
                                           sa_stride * 4, kSwap ? kBN : kBM, 1, CU_TENSOR_MAP_SWIZZLE_NONE);
  // bf16 output: TMA stores of 16-row (one warp's) x kEpiN-column slices, swizzled like the staging
  // buffer. fp32 output is stored directly from registers (the map is not read; map_a stands in for it).
  const bool out_fp32 = out.scalar_type() == at::kFloat;
  const CUtensorMap map_out =
      out_fp32 || kSwap ? map_a
               : tensor_map_2d(out.data_ptr(), CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, n, m, n * 2, Traits::kEpiN, dg::kEpiStoreRows,
                               Traits::kEpiN == 64   ? CU_TENSOR_MAP_SWIZZLE_128B
                               : Traits::kEpiN == 32 ? CU_TENSOR_MAP_SWIZZLE_64B
                                                     : CU_TENSOR_MAP_SWIZZLE_32B);

  dg::GemmParams p;
  p.m = static_cast<int>(km);
  p.n = static_cast<int>(kn);
  p.k_blocks = static_cast<int>(k_blocks);
  p.out = out.data_ptr();
  p.out_fp32 = out_fp32;
  p.b_scales = b_scales.data_ptr<float>();
  p.bias = bias_kind != dg::kBiasNone ? bias.data_ptr() : nullptr;
#if defined(DG_TRACE) || defined(DG_LIFETRACE)
  p.bias = bias.data_ptr();  // the diagnostic build's event log (fp8_gemm.cuh), with bias_kind 0
#endif
  p.bias_kind = static_cast<int>(bias_kind);
  p.group_n = static_cast<int>(group_n);
  p.l2_a = static_cast<int>(l2_hints & 3);         // dg::L2Priority of the A loads...
  p.l2_b = static_cast<int>((l2_hints >> 2) & 3);  // ...and of the B loads
  p.pdl = pdl != 0 ? 1 : 0;
  p.b_slots = placed ? b_slots.data_ptr<int>() : nullptr;
  p.b_slot_stride = placed ? static_cast<int>(b_slots.size(1)) : 0;
  p.b_slab_shift = placed ? __builtin_ctzll(static_cast<unsigned long long>(b_slab_rows)) : 0;
  p.b_box_rows = static_cast<int>(b_box_rows);
  p.sm_side = nullptr;
  p.side_claims = nullptr;
  p.side0_clusters = p.side0_n_tiles = p.side1_sk_units = 0;
  p.group_rows = nullptr;
  p.groups = static_cast<int>(groups);
  p.group_stride = static_cast<int>(group_stride);
  if (kGrouped != dg::kGroupNone) {
    TORCH_CHECK(group_rows.is_cuda() && group_rows.scalar_type() == at::kInt && group_rows.numel() == groups &&
                    group_rows.is_contiguous() && b.size(0) == groups * n &&
                    (kGrouped != dg::kGroupMasked || m == groups * group_stride),
                "deepergemm: grouped GEMM needs group_rows (", groups, ",) int32 contiguous on the GPU, b (groups * N, K)"
                " and, masked, a (groups * max_m, K)");
    p.group_rows = group_rows.data_ptr<int>();
  }

  static bool attributes_set = false;  // per module = per variant; the value is the same on every device
  if (!attributes_set) {
    DG_CUDA_CHECK(cudaFuncSetAttribute(kKernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Layout::kDynamicBytes));
    if (kCluster > 1) DG_CUDA_CHECK(cudaFuncSetAttribute(kKernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 0));
    attributes_set = true;
  }
  // One unit = kClusterM x kClusterN tiles (scheduler.cuh; with split-K one tile for kSplitK CTAs); one cluster per unit, at most as many
  // clusters as fit on the GPU at once (a GPC's SMs need not divide into whole clusters).
  // Grouped: the kernel counts its tiles from the device's row counts; the grid takes the most there can be
  // (every group's rows may start a tile of their own, and a pair's rounding add one), idle CTAs leave at once.
  const int64_t m_tiles = kGrouped == dg::kGroupNone ? (km + kBM - 1) / kBM
                          : kGrouped == dg::kGroupMasked ? groups * dg::group_tiles(static_cast<int>(group_stride), kBM, kClusterM)
                                                         : (m + kBM - 1) / kBM + groups * kClusterM;
  const int64_t units = ((m_tiles + kClusterM - 1) / kClusterM) * ((kn + kBN * kClusterN - 1) / (kBN * kClusterN));
  cudaLaunchConfig_t config = {};
  config.blockDim = dim3(Traits::kThreads);
  config.dynamicSmemBytes = Layout::kDynamicBytes;
  config.stream = reinterpret_cast<cudaStream_t>(stream);
  cudaLaunchAttribute attrs[2];
  attrs[0].id = cudaLaunchAttributeClusterDimension;
  attrs[0].val.clusterDim.x = kCluster;
  attrs[0].val.clusterDim.y = 1;
  attrs[0].val.clusterDim.z = 1;
  // pdl: programmatic dependent launch, this kernel's prologue overlaps the previous kernel's tail (the kernel
  // waits for it in griddepcontrol.wait before touching global memory)
  attrs[1].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attrs[1].val.programmaticStreamSerializationAllowed = 1;
  config.attrs = attrs;
  config.numAttrs = 1;  // (the occupancy query below sees the cluster shape alone)
  static int64_t resident_clusters = 0;  // per module; num_sms is the same for every call on one GPU model
  if (resident_clusters == 0) {
    resident_clusters = num_sms / kCluster;
    if (kCluster > 1) {
      int fits = 0;
      config.gridDim = dim3(static_cast<unsigned>(resident_clusters * kCluster));
      DG_CUDA_CHECK(cudaOccupancyMaxActiveClusters(&fits, kKernel, &config));
      TORCH_CHECK(fits > 0, "deepergemm: no ", kCluster, "-CTA cluster of this kernel fits on the GPU");
      resident_clusters = std::min<int64_t>(resident_clusters, fits);
    }
  }
  const int64_t clusters = std::min<int64_t>(units, resident_clusters);
  config.gridDim = dim3(static_cast<unsigned>(clusters * kCluster));
  // Stream-K tail (scheduler.cuh), when Python passes a workspace: only if the units leave the last wave
  // part-filled. It takes that wave's units and one full wave more, so each cluster's range is >= 1 tile.
  // One-partial-set loops only (the others never start a tile's sums from a workspace slot).
  // L2-side-aware scheduling (scheduler.cuh's SideProblem): N-tiles [0, side0_n_tiles) to side 0, the clusters
  // split between the sides in proportion to their units, each side with its own stream-K tail.
  const bool by_side = side_claims.numel() > 0;
  const int64_t m_units = (m_tiles + kClusterM - 1) / kClusterM;
  int64_t side_units[2] = {units, 0}, side_clusters[2] = {clusters, 0};
  if (by_side) {
    const int64_t n_tiles = (n + kBN - 1) / kBN;
    TORCH_CHECK(kGrouped == dg::kGroupNone && side_claims.is_cuda() && side_claims.scalar_type() == at::kInt &&
                    side_claims.numel() >= 3 && sm_side.is_cuda() && sm_side.scalar_type() == at::kByte &&
                    sm_side.numel() == 256 && sm_side.device() == a.device() && side_claims.device() == a.device() &&
                    side0_n_tiles > 0 && side0_n_tiles < n_tiles &&
                    side0_n_tiles % kClusterN == 0 && clusters >= 2,
                "deepergemm: L2-side scheduling needs a plain variant, 3 int32 claim counters, a (256,) uint8 SM side "
                "table, side 0's N-tiles a multiple of the cluster's N (", kClusterN, ") in (0, ", n_tiles,
                "), and two clusters or more; got ", side0_n_tiles, " tiles, ", clusters, " clusters");
    side_units[0] = m_units * (side0_n_tiles / kClusterN);
    side_units[1] = units - side_units[0];
    side_clusters[0] = std::min<int64_t>(std::max<int64_t>((clusters * side_units[0] + units / 2) / units, 1), clusters - 1);
    side_clusters[1] = clusters - side_clusters[0];
    p.sm_side = sm_side.data_ptr<uint8_t>();
    p.side_claims = side_claims.data_ptr<int>();
    p.side0_clusters = static_cast<int>(side_clusters[0]);
    p.side0_n_tiles = static_cast<int>(side0_n_tiles);
  }
  p.sk_units = 0;
  p.sk_partials = nullptr;
  p.sk_flags = nullptr;
  const int sk_units[2] = {dg::stream_k_units(side_units[0], side_clusters[0]),
                           by_side ? dg::stream_k_units(side_units[1], side_clusters[1]) : 0};
  if (stream_k_workspace.numel() > 0 && kSplitK == 1 && kAcc == dg::kAccSingle && kGrouped == dg::kGroupNone &&
      (sk_units[0] > 0 || sk_units[1] > 0)) {
    // num_sms flags per math warpgroup, then num_sms slots (the grid has at most num_sms CTAs)
    TORCH_CHECK(stream_k_workspace.is_cuda() && stream_k_workspace.scalar_type() == at::kInt &&
                    stream_k_workspace.numel() >= num_sms * (kBM * kBN + kMathWGs) && clusters * kCluster <= num_sms,
                "deepergemm: the stream-K workspace needs ", num_sms * (kBM * kBN + kMathWGs), " int32 elements");
    p.sk_units = sk_units[0];
    p.side1_sk_units = sk_units[1];
    p.sk_flags = stream_k_workspace.data_ptr<int>();  // zero between launches
    p.sk_partials = reinterpret_cast<float*>(stream_k_workspace.data_ptr<int>() + num_sms * kMathWGs);
  }
  config.numAttrs = pdl != 0 ? 2 : 1;
  DG_CUDA_CHECK(cudaLaunchKernelEx(&config, kKernel, map_a, map_b, map_sa, map_out, p));
}

// The compile-time facts of this variant, for Python's checks and reports.
std::vector<int64_t> variant_info() {
  return {kBM, kBN, kStages, kAcc, kClusterM, kClusterN, kSplitK, kMathWGs, kGrouped, Layout::kDynamicBytes, kSwap};
}
