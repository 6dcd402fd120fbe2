// Runs ptx/scheduler.cuh on the CPU for every CTA of many grids and checks the partition of the work
// (built and run by tests/test_scheduler.py; no GPU needed). For each grid it checks that
//  - every CTA's step sequence (TileScheduler::step, what the step-meta writer publishes) equals its walk
//    work by work (TileScheduler::work, what the producers load);
//  - the CTAs of a cluster run the same number of steps on the same K blocks (the multicast handshakes
//    and the split-K join rely on it), each on its own tile of the unit;
//  - every K block of every tile (padding tiles included) is run exactly once;
//  - stream-K: a tile is cut at most once; its head (K blocks from 0) is the first work of cluster c - 1
//    and ends with kFixContribute, its tail is the last stream-K work of cluster c, starts with
//    first_of_tail and ends with kFixOwn; every other tile ends with kFixStore; the clusters' step counts
//    differ by at most one K block (two for the pairs' ranges, cut on pairs) (the tail wave is evened out);
//  - L2 sides: each side's clusters run only its N-tiles, the sides together every tile once, and the
//    kernel's slot claims take every slot exactly once wherever the clusters land.
// Prints one line per failure and exits 1 if there was any.
#include <algorithm>
#include <cstdio>
#include <map>
#include <tuple>
#include <vector>

#include "grouped.cuh"
#include "scheduler.cuh"

namespace {

int failures = 0;
#define CHECK(cond, ...)                          \
  do {                                            \
    if (!(cond)) {                                \
      if (failures++ < 20) {                      \
        std::printf("FAIL %s: ", #cond);          \
        std::printf(__VA_ARGS__);                 \
        std::printf("\n");                        \
      }                                           \
    }                                             \
  } while (0)

struct Seen {
  int cta, step;
};

// side0_n_tiles > 0: L2-side-aware scheduling (scheduler.cuh's SideProblem), the binding's split of the clusters
// and stream-K units between the sides; cluster c below is then the global slot (side 0's slots first), which
// is also the stream-K workspace slot, so the hand-off checks read the same.
// A stream-K fill's tile: its pieces are runs of consecutive K blocks in consecutive clusters (the same rank), in
// cluster order from K block 0; every piece but the last ends with kFixContribute and is its cluster's first work
// (done before anything that could wait); the last ends at K block kb - 1 with kFixOwn (kFixStore if it is the only
// piece) and is its cluster's last work, and that cluster's join_first() is the first piece's cluster. No piece
// starts from a slot (first_of_tail).
void check_fill_tile(const char* what, std::pair<int, int> tile, const std::vector<std::pair<int, int>>& list,
                     const std::vector<std::vector<dg::Step>>& steps_of, const std::vector<int>& join_first_of, int kb,
                     int ctas) {
  int k_next = 0;
  for (size_t i = 0; i < list.size(); ++i) {
    const auto& seq = steps_of[list[i].first];
    int t = list[i].second;
    CHECK(seq[t].k_block == k_next, "%s: fill tile (%d, %d) piece %zu starts at K block %d, expected %d", what,
          tile.first, tile.second, i, seq[t].k_block, k_next);
    CHECK(i == 0 || (list[i].first == list[i - 1].first + ctas), "%s: fill tile (%d, %d) piece %zu not in the next "
          "cluster", what, tile.first, tile.second, i);
    for (; seq[t].last_k == 0; ++t) CHECK(!seq[t].first_of_tail, "%s: fill step starts from a slot", what);
    CHECK(!seq[t].first_of_tail, "%s: fill step starts from a slot", what);
    k_next = seq[t].k_block + 1;
    const bool last = i + 1 == list.size();
    const int expected = 1 + (!last ? dg::kFixContribute : list.size() > 1 ? dg::kFixOwn : dg::kFixStore);
    CHECK(seq[t].last_k == expected, "%s: fill tile (%d, %d) piece %zu of %zu ends with last_k %d", what, tile.first,
          tile.second, i, list.size(), seq[t].last_k);
    if (!last) CHECK(list[i].second == 0, "%s: fill tile (%d, %d) piece %zu is not its cluster's first work", what,
                     tile.first, tile.second, i);
    if (last && list.size() > 1) {
      CHECK(t + 1 == static_cast<int>(seq.size()), "%s: fill tile (%d, %d): the owner's piece is not its last work",
            what, tile.first, tile.second);
      CHECK(join_first_of[list[i].first / ctas] == list[0].first / ctas, "%s: fill tile (%d, %d): join_first %d, "
            "the first piece is in cluster %d", what, tile.first, tile.second, join_first_of[list[i].first / ctas],
            list[0].first / ctas);
    }
  }
  CHECK(k_next == kb, "%s: fill tile (%d, %d) pieces end at K block %d", what, tile.first, tile.second, k_next);
}

template <int CM, int CN, int KS, int KG = 1>
void check_grid(int m_tiles, int n_tiles, int kb, int group_n, int clusters, bool stream_k, int side0_n_tiles = 0) {
  using Sched = dg::TileScheduler<CM, CN, KS, KG>;
  constexpr int kCtas = CM * CN * KS;
  const int m_units = (m_tiles + CM - 1) / CM, n_units = (n_tiles + CN - 1) / CN;
  const int units = m_units * n_units;
  // the binding's grid: one cluster per unit at most, unless a stream-K fill takes every cluster
  const bool fill = stream_k && KS == 1 && dg::stream_k_fill_fits(units, clusters, kb, KG);
  if (clusters > units && !fill) clusters = units;
  const bool by_side = side0_n_tiles > 0;
  // the binding's rules (ptx/binding.cpp, params.h)
  int side_units[2] = {units, 0}, side_clusters[2] = {clusters, 0};
  if (by_side) {
    side_units[0] = m_units * (side0_n_tiles / CN);
    side_units[1] = units - side_units[0];
    side_clusters[0] = static_cast<int>(dg::side0_clusters_for(clusters, side_units[0], units));
    side_clusters[1] = clusters - side_clusters[0];
  }
  const int sk[2] = {stream_k && KS == 1 ? dg::stream_k_units(side_units[0], side_clusters[0], kb, KG) : 0,
                     stream_k && KS == 1 && by_side ? dg::stream_k_units(side_units[1], side_clusters[1], kb, KG) : 0};
  const bool side_fill[2] = {sk[0] > 0 && sk[0] < side_clusters[0], sk[1] > 0 && sk[1] < side_clusters[1]};
  char what[200];
  std::snprintf(what, sizeof what, "CM %d CN %d KS %d KG %d, %dx%d tiles, KB %d, group_n %d, %d clusters, "
                "sk_units %d+%d, side 0: %d tiles, %d clusters", CM, CN, KS, KG, m_tiles, n_tiles, kb, group_n,
                clusters, sk[0], sk[1], side0_n_tiles, side_clusters[0]);
  std::map<std::tuple<int, int, int>, std::vector<Seen>> runs;  // (m, n, k) -> who ran it
  std::vector<std::vector<dg::Step>> steps_of(clusters * kCtas);
  std::vector<int> join_first_of(clusters, -1);  // fill: the first contributing cluster (global) of an owner's tile
  std::vector<int> side_of(clusters, 0);
  for (int c = 0; c < clusters; ++c) {
    dg::SideProblem sp{0, n_tiles, c, clusters, sk[0], 0};
    if (by_side) {
      const dg::SideSlot slot{c < side_clusters[0] ? 0 : 1, c < side_clusters[0] ? c : c - side_clusters[0]};
      sp = dg::side_problem(slot, n_tiles, side0_n_tiles, clusters, side_clusters[0], sk[0], sk[1]);
      CHECK(sp.slot_base + sp.cluster == c, "%s: slot %d has workspace slot %d", what, c, sp.slot_base + sp.cluster);
    }
    for (int rank = 0; rank < kCtas; ++rank) {
      const Sched s(m_tiles, sp.n_tiles, kb, group_n, rank, sp.cluster, sp.clusters, sp.sk_units, sp.n_first,
                    sp.slot_base);
      const int cta = c * kCtas + rank;
      const uint32_t n = s.num_steps();
      side_of[c] = sp.n_first == 0 ? 0 : 1;
      CHECK(s.sk_fill == side_fill[side_of[c]], "%s: cluster %d sk_fill %d", what, c, int(s.sk_fill));
      if (rank == 0 && s.sk_fill) join_first_of[c] = s.join_first() + sp.slot_base;
      std::vector<dg::Step>& seq = steps_of[cta];
      for (uint32_t i = 0; i < n; ++i) seq.push_back(s.step(i));
      // the producers' walk, work by work
      uint32_t i = 0;
      for (int j = 0; j < s.num_works(); ++j) {
        const dg::Work w = s.work(j);
        CHECK(w.k_begin < w.k_end, "%s: CTA %d work %d is empty", what, cta, j);
        // the pairs' loops take K blocks two at a time: every piece of a tile starts and ends on a pair
        CHECK(w.k_begin % KG == 0 && w.k_end % KG == 0, "%s: CTA %d work %d is K blocks [%d, %d), not whole granules "
              "of %d", what, cta, j, w.k_begin, w.k_end, KG);
        for (int k = w.k_begin; k < w.k_end; ++k, ++i) {
          CHECK(i < n && seq[i].m_block == w.m_block && seq[i].n_block == w.n_block && seq[i].k_block == k,
                "%s: CTA %d step %u differs from work %d", what, cta, i, j);
          if (i >= n) break;
          const int last = k == w.k_end - 1 ? 1 + w.fixup : 0;
          CHECK(seq[i].last_k == last, "%s: CTA %d step %u last_k %d, expected %d", what, cta, i, seq[i].last_k, last);
          CHECK(seq[i].first_of_tail == (w.fixup == dg::kFixOwn && k == w.k_begin && !s.sk_fill),
                "%s: CTA %d step %u first_of_tail", what, cta, i);
        }
      }
      CHECK(i == n, "%s: CTA %d works cover %u steps, num_steps %u", what, cta, i, n);
      for (uint32_t t = 0; t < n; ++t) {
        runs[{seq[t].m_block, seq[t].n_block, seq[t].k_block}].push_back({cta, int(t)});
        CHECK(!by_side || (seq[t].n_block < side0_n_tiles) == (sp.n_first == 0),
              "%s: slot %d of side %d runs N-tile %d", what, c, sp.n_first == 0 ? 0 : 1, seq[t].n_block);
      }
    }
    // the CTAs of a cluster: the same steps (multicast) on their own tiles of each unit; split-K ranks the
    // same tiles in the same order (their K ranges may differ by a block: the join is per tile)
    for (int rank = 1; rank < kCtas; ++rank) {
      const auto& a = steps_of[c * kCtas];
      const auto& b = steps_of[c * kCtas + rank];
      if constexpr (KS > 1) {
        std::vector<std::pair<int, int>> ta, tb;
        for (const auto& st : a) if (st.last_k) ta.push_back({st.m_block, st.n_block});
        for (const auto& st : b) if (st.last_k) tb.push_back({st.m_block, st.n_block});
        CHECK(ta == tb, "%s: cluster %d split-K ranks 0 and %d finish different tiles", what, c, rank);
      } else {
        CHECK(a.size() == b.size(), "%s: cluster %d ranks 0 and %d run %zu and %zu steps", what, c, rank, a.size(),
              b.size());
        for (size_t t = 0; t < a.size() && t < b.size(); ++t) {
          CHECK(a[t].k_block == b[t].k_block && a[t].last_k == b[t].last_k &&
                    b[t].m_block == a[t].m_block + rank % CM && b[t].n_block == a[t].n_block + rank / CM,
                "%s: cluster %d rank %d step %zu is not rank 0's step on its own tile", what, c, rank, t);
        }
      }
    }
  }
  // every K block of every tile of every unit (padding tiles included) exactly once
  for (int mu = 0; mu < m_units; ++mu) {
    for (int nu = 0; nu < n_units; ++nu) {
      for (int r = 0; r < CM * CN; ++r) {
        const int m = mu * CM + r % CM, n = nu * CN + r / CM;
        for (int k = 0; k < kb; ++k) {
          const auto it = runs.find({m, n, k});
          const size_t times = it == runs.end() ? 0 : it->second.size();
          CHECK(times == 1, "%s: tile (%d, %d) K block %d run %zu times", what, m, n, k, times);
        }
      }
    }
  }
  if (KS > 1) return;
  // stream-K hand-offs: per tile, the CTAs that ran it and where its pieces start and end
  std::map<std::pair<int, int>, std::vector<std::pair<int, int>>> pieces;  // tile -> (cta, first step) per piece
  for (int cta = 0; cta < clusters * kCtas; ++cta) {
    const auto& seq = steps_of[cta];
    for (size_t t = 0; t < seq.size(); ++t) {
      if (t == 0 || seq[t - 1].last_k != 0) pieces[{seq[t].m_block, seq[t].n_block}].push_back({cta, int(t)});
    }
  }
  for (const auto& [tile, list] : pieces) {
    if (side_fill[side_of[list[0].first / kCtas]]) {
      check_fill_tile(what, tile, list, steps_of, join_first_of, kb, kCtas);
      continue;
    }
    CHECK(list.size() <= 2, "%s: tile (%d, %d) in %zu pieces", what, tile.first, tile.second, list.size());
    if (list.size() == 1) {
      const auto& seq = steps_of[list[0].first];
      const dg::Step& first = seq[list[0].second];
      CHECK(first.k_block == 0 && !first.first_of_tail, "%s: whole tile (%d, %d) starts at K block %d", what,
            tile.first, tile.second, first.k_block);
      const dg::Step& last = seq[list[0].second + kb - 1];
      CHECK(last.last_k == 1 + dg::kFixStore, "%s: whole tile (%d, %d) ends with last_k %d", what, tile.first,
            tile.second, last.last_k);
    } else if (list.size() == 2) {
      const auto head = steps_of[list[0].first][list[0].second].k_block == 0 ? list[0] : list[1];
      const auto tail = steps_of[list[0].first][list[0].second].k_block == 0 ? list[1] : list[0];
      const int head_cluster = head.first / kCtas, tail_cluster = tail.first / kCtas;
      CHECK(tail_cluster == head_cluster + 1 && head.first % kCtas == tail.first % kCtas,
            "%s: tile (%d, %d) head in CTA %d, tail in CTA %d", what, tile.first, tile.second, head.first, tail.first);
      CHECK(head.second == 0, "%s: tile (%d, %d): the head is not cluster %d's first work", what, tile.first,
            tile.second, head_cluster);
      const auto& hs = steps_of[head.first];
      const auto& ts = steps_of[tail.first];
      int h = head.second;
      while (hs[h].last_k == 0) ++h;
      CHECK(hs[h].last_k == 1 + dg::kFixContribute, "%s: tile (%d, %d) head ends with last_k %d", what, tile.first,
            tile.second, hs[h].last_k);
      CHECK(ts[tail.second].first_of_tail && ts[tail.second].k_block == hs[h].k_block + 1,
            "%s: tile (%d, %d) tail does not start where the head ends", what, tile.first, tile.second);
      int e = tail.second;
      while (ts[e].last_k == 0) ++e;
      CHECK(ts[e].last_k == 1 + dg::kFixOwn && ts[e].k_block == kb - 1, "%s: tile (%d, %d) tail ends badly", what,
            tile.first, tile.second);
      // the tail is reached no earlier (in steps) than the head is done
      CHECK(tail.second >= h, "%s: tile (%d, %d) tail at step %d, head done at step %d", what, tile.first,
            tile.second, tail.second, h);
    }
  }
  // the tail wave is evened out (per side): cluster step counts within one K block (stream-K) or one unit (not)
  for (int side = 0; side < (by_side ? 2 : 1); ++side) {
    const int first = side == 0 ? 0 : side_clusters[0], count = side_clusters[side];
    size_t lo = ~size_t(0), hi = 0;
    for (int c = first; c < first + count; ++c) {
      lo = std::min(lo, steps_of[c * kCtas].size());
      hi = std::max(hi, steps_of[c * kCtas].size());
    }
    CHECK(hi - lo <= size_t(sk[side] > 0 ? KG : kb), "%s: side %d cluster step counts %zu..%zu", what, side, lo, hi);
    CHECK(!side_fill[side] || lo >= 1, "%s: side %d: a fill cluster without work", what, side);
    CHECK(sk[side] == 0 || hi * count <= size_t(side_units[side]) * kb + size_t(KG) * count,
          "%s: %zu steps for side %d's busiest cluster", what, hi, side);
  }
}

// L2-side slots: the kernel's claim (fp8_gemm.cuh's claim_side_slot: the own SM's side while it has slots, else
// the other) for clusters landing on sides in any pattern takes every slot exactly once.
void check_side_claims() {
  unsigned seed = 777;
  auto next = [&seed](int mod) { seed = seed * 1103515245u + 12345u; return static_cast<int>((seed >> 8) % mod); };
  for (int trial = 0; trial < 2000; ++trial) {
    const int clusters = 2 + next(131), cap0 = 1 + next(clusters - 1);
    const int bias = next(101);  // percent of clusters landing on side 0
    int claimed[2] = {0, 0};
    std::vector<int> taken(clusters, 0);
    for (int c = 0; c < clusters; ++c) {
      int side = next(100) < bias ? 0 : 1;
      int rank = claimed[side]++;
      if (rank >= (side == 0 ? cap0 : clusters - cap0)) {
        side ^= 1;
        rank = claimed[side]++;
      }
      const int cap = side == 0 ? cap0 : clusters - cap0;
      CHECK(rank < cap, "side claims: %d clusters, cap0 %d: a claim got rank %d of side %d", clusters, cap0, rank, side);
      if (rank < cap) ++taken[(side == 0 ? 0 : cap0) + rank];
    }
    for (int slot = 0; slot < clusters; ++slot) {
      CHECK(taken[slot] == 1, "side claims: %d clusters, cap0 %d: slot %d taken %d times", clusters, cap0, slot,
            taken[slot]);
    }
  }
}

template <int CM, int CN, int KS, int KG = 1>
void check_shapes() {
  const int ks[] = {1, 2, 3, 4, 16, 56};
  const int grids[] = {66, 132, 7, 64};
  const int tiles[][2] = {{16, 17}, {32, 11}, {4, 50}, {1, 1}, {3, 5}, {33, 8}, {16, 56}, {1, 132}, {4, 17}, {2, 9}};
  for (const int kb : ks) {
    if (kb < KS || kb % KG != 0) continue;
    for (const int g : grids) {
      for (const auto& t : tiles) {
        for (const int group_n : {16, 3}) {
          const int clusters = g / (CM * CN * KS) > 0 ? g / (CM * CN * KS) : 1;
          check_grid<CM, CN, KS, KG>(t[0], t[1], kb, group_n, clusters, false);
          check_grid<CM, CN, KS, KG>(t[0], t[1], kb, group_n, clusters, true);
          // L2 sides: side 0's N-tiles a multiple of CN, about half or a third of them (two clusters or more)
          const int n_units = (t[1] + CN - 1) / CN, units = (t[0] + CM - 1) / CM * n_units;
          if (n_units < 2 || std::min(clusters, units) < 2) continue;
          for (const int side0_units : {n_units / 2, std::max(1, n_units / 3)}) {
            check_grid<CM, CN, KS, KG>(t[0], t[1], kb, group_n, clusters, false, side0_units * CN);
            check_grid<CM, CN, KS, KG>(t[0], t[1], kb, group_n, clusters, true, side0_units * CN);
          }
        }
      }
    }
  }
}

// Grouped GEMMs: the group table built the kernel's way (scheduler.cuh's group_span and group_extent, summed
// in order as the kernel's warp does in rounds of 32), against a row-by-row definition: every real row of
// every group lies in exactly one of the table's M-tiles (GroupTable::rows), no tile starts outside its
// group's real rows, tiles never reach into another group's rows before their end, and nothing lies past
// row M. Sizes include zeros, negatives, overlong and misaligned counts.
void check_groups(int mode, const std::vector<int>& requested, int stride, int m, int bm, int cm) {
  const int groups = static_cast<int>(requested.size());
  std::vector<int> tiles_before(groups + 1), start(groups), end(groups);
  int tiles = 0, offset = 0;
  for (int g = 0; g < groups; ++g) {
    const dg::GroupExtent e = dg::group_extent(mode, g, requested[g], offset, stride, m);
    if (mode == dg::kGroupContiguous) offset = std::min(offset + dg::group_span(requested[g], stride, m), m);
    tiles_before[g] = tiles;
    start[g] = e.start;
    end[g] = e.start + e.rows;
    tiles += dg::group_tiles(e.rows, bm, cm);
  }
  tiles_before[groups] = tiles;
  const dg::GroupTable table{tiles_before.data(), start.data(), end.data(), groups};
  // the definition: contiguous segments of round_up(size, align) rows back to back, masked g * max_m
  std::vector<int> owner(m, -1);
  int seg = 0;
  for (int g = 0; g < groups; ++g) {
    const int want = std::max(requested[g], 0);
    const int first = mode == dg::kGroupMasked ? g * stride : seg;
    const int real = mode == dg::kGroupMasked ? std::min(want, stride) : want;
    for (int r = first; r < first + real && r < m; ++r) owner[r] = g;
    if (mode == dg::kGroupContiguous) seg += (want + stride - 1) / stride * stride;
    if (seg > m) seg = m;
  }
  std::vector<int> covered(m, 0);
  CHECK(table.m_tiles() % cm == 0, "groups mode %d: %d tiles for pairs of %d", mode, table.m_tiles(), cm);
  for (int t = 0; t < table.m_tiles(); ++t) {
    const dg::TileRows r = table.rows(t, bm);
    // the CM tiles of a multicast unit (t / cm) share a group, so their B tile
    CHECK(table.rows(t / cm * cm, bm).group == r.group, "groups mode %d: tile %d's pair spans two groups", mode, t);
    if (t % cm != 0 && r.row0 >= r.row_end) {  // a pair's rounding tile: past its group's end, nothing stored
      CHECK(r.row0 - bm < r.row_end, "groups mode %d: rounding tile %d starts %d past its group", mode, t,
            r.row0 - r.row_end);
      continue;
    }
    CHECK(r.row0 >= 0 && r.row0 < r.row_end && r.row_end <= m && owner[r.row0] == r.group,
          "groups mode %d: tile %d starts at row %d (group %d, end %d)", mode, t, r.row0, r.group, r.row_end);
    for (int row = std::max(r.row0, 0); row < std::min(std::min(r.row0 + bm, r.row_end), m); ++row) {
      CHECK(owner[row] == r.group, "groups mode %d: tile %d row %d belongs to %d, not %d", mode, t, row, owner[row],
            r.group);
      ++covered[row];
    }
  }
  for (int row = 0; row < m; ++row) {
    CHECK(covered[row] == (owner[row] >= 0 ? 1 : 0), "groups mode %d: row %d (group %d) covered %d times", mode,
          row, owner[row], covered[row]);
  }
}

void check_group_tables() {
  unsigned seed = 12345;
  auto next = [&seed](int mod) { seed = seed * 1103515245u + 12345u; return static_cast<int>((seed >> 8) % mod); };
  for (int bm : {64, 128, 256}) {
    for (int trial = 0; trial < 200; ++trial) {
      const int groups = 1 + next(trial < 100 ? 8 : dg::kMaxGroups);
      std::vector<int> sizes(groups);
      for (int& v : sizes) v = next(10) == 0 ? -next(50) : next(10) == 0 ? 0 : next(3 * bm);
      {  // contiguous: alignment 128 (tiles of 256 rows too), A sized for the segments, shorter, or longer
        int need = 0;
        for (int v : sizes) need += (std::max(v, 0) + 127) / 128 * 128;
        const int m = std::max(1, trial % 3 == 0 ? need : trial % 3 == 1 ? need / 2 + 1 : need + 300);
        for (int cm : {1, 2}) check_groups(dg::kGroupContiguous, sizes, 128, m, bm, cm);
      }
      const int max_m = 1 + next(3 * bm);
      for (int cm : {1, 2}) check_groups(dg::kGroupMasked, sizes, max_m, groups * max_m, bm, cm);
    }
  }
}

}  // namespace

int main() {
  check_side_claims();
  check_group_tables();
  check_shapes<1, 1, 1>();
  check_shapes<2, 1, 1>();
  check_shapes<1, 2, 1>();
  check_shapes<2, 2, 1>();
  check_shapes<1, 1, 2>();
  check_shapes<1, 1, 1, 2>();  // the 256-K recipe's pairs: stream-K ranges cut on pairs of K blocks
  check_shapes<1, 2, 1, 2>();
  check_shapes<2, 1, 1, 2>();
  if (failures) {
    std::printf("%d failures\n", failures);
    return 1;
  }
  std::printf("scheduler ok\n");
  return 0;
}
