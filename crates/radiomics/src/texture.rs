//! Texture families on the discretised intensity mask: GLCM (IBSI 3.6, LFYI), GLRLM (3.7, TP0I),
//! GLSZM (3.8, 9SAK), GLDZM (3.9, VMDZ), NGTDM (3.10, IPET) and NGLDM (3.11, REK0), with every
//! aggregation the standard defines.
//!
//! Directional families (GLCM, GLRLM) get six aggregations:
//! `2D_avg` (per slice and direction, averaged), `2D_comb` (per slice, directions merged, averaged
//! over slices), `2_5D_avg` (per direction, slices merged, averaged over directions), `2_5D_comb`
//! (everything merged), `3D_avg` (per 3-D direction, averaged), `3D_comb` (all 13 merged).
//! The others get `2D` (per slice, averaged), `2_5D` (slices merged) and `3D`.

use std::collections::BTreeMap;

use crate::FastMap;

use crate::FeatureSink;
use crate::settings::{Family, RadiomicsSettings};

/// The discretised region: grey levels (0 = outside the intensity mask) on a box.
pub struct Grid<'a> {
    pub dims: [usize; 3],
    pub levels: &'a [u32],
    /// Morphological mask on the same box (for GLDZM distances).
    pub morph: &'a [bool],
    pub n_levels: u32,
    /// The levels again, with a border of `pad` zero voxels, so that neighbour lookups up to
    /// `pad` away need no bounds checks.
    padded: Vec<u32>,
    pad: i64,
    pdims: [i64; 2],
}

const IN_PLANE: [[i64; 3]; 4] = [[1, 0, 0], [1, 1, 0], [0, 1, 0], [-1, 1, 0]];

fn directions_3d() -> Vec<[i64; 3]> {
    let mut d = IN_PLANE.to_vec();
    for dy in -1..=1 {
        for dx in -1..=1 {
            d.push([dx, dy, 1]);
        }
    }
    d
}

impl<'a> Grid<'a> {
    /// A grid whose neighbour lookups reach up to `reach` voxels beyond the box.
    pub fn new(
        dims: [usize; 3],
        levels: &'a [u32],
        morph: &'a [bool],
        n_levels: u32,
        reach: u32,
    ) -> Self {
        let pad = reach.max(1) as usize;
        let p = [dims[0] + 2 * pad, dims[1] + 2 * pad, dims[2] + 2 * pad];
        let mut padded = vec![0u32; p[0] * p[1] * p[2]];
        for z in 0..dims[2] {
            for y in 0..dims[1] {
                let src = dims[0] * (y + dims[1] * z);
                let dst = pad + p[0] * ((y + pad) + p[1] * (z + pad));
                padded[dst..dst + dims[0]].copy_from_slice(&levels[src..src + dims[0]]);
            }
        }
        Grid {
            dims,
            levels,
            morph,
            n_levels,
            padded,
            pad: pad as i64,
            pdims: [p[0] as i64, p[1] as i64],
        }
    }

    /// Index into the padded levels of (x, y, z).
    #[inline]
    fn flat(&self, x: usize, y: usize, z: usize) -> i64 {
        (x as i64 + self.pad)
            + self.pdims[0] * ((y as i64 + self.pad) + self.pdims[1] * (z as i64 + self.pad))
    }

    /// Flat offset of a neighbour displacement.
    fn offset(&self, d: [i64; 3]) -> i64 {
        d[0] + self.pdims[0] * (d[1] + self.pdims[1] * d[2])
    }

    fn slice_range(&self, slice: Option<usize>) -> std::ops::Range<usize> {
        match slice {
            Some(z) => z..z + 1,
            None => 0..self.dims[2],
        }
    }
}

/// Running mean of feature vectors, skipping undefined (empty-matrix) ones.
struct Mean {
    sum: Vec<f64>,
    n: usize,
}

impl Mean {
    fn new() -> Self {
        Mean {
            sum: Vec::new(),
            n: 0,
        }
    }
    fn add(&mut self, f: Option<Vec<f64>>) {
        if let Some(f) = f {
            if self.sum.is_empty() {
                self.sum = vec![0.0; f.len()];
            }
            for (s, v) in self.sum.iter_mut().zip(f) {
                *s += v;
            }
            self.n += 1;
        }
    }
    fn get(&self, len: usize) -> Vec<f64> {
        if self.n == 0 {
            vec![f64::NAN; len]
        } else {
            self.sum.iter().map(|s| s / self.n as f64).collect()
        }
    }
}

fn emit(out: &mut FeatureSink, prefix: &str, names: &[&str], suffix: &str, values: &[f64]) {
    for (n, v) in names.iter().zip(values) {
        out.push(&format!("{prefix}_{n}_{suffix}"), *v);
    }
}

/// Compute every requested texture family.
pub fn compute(grid: &Grid, settings: &RadiomicsSettings, out: &mut FeatureSink) {
    let dist = settings.texture.distance as i64;
    let t = std::time::Instant::now();
    let lap =
        |what: &str| tracing::debug!(seconds = t.elapsed().as_secs_f64(), "{what} (cumulative)");
    if settings.wants(Family::Glcm) {
        directional(
            grid,
            out,
            "cm",
            &GLCM_NAMES,
            &|g, s, d| glcm_matrix(g, s, d, dist),
            &|m: &Glcm| glcm_features(m, grid.n_levels),
        );
    }
    lap("glcm");
    if settings.wants(Family::Glrlm) {
        directional(grid, out, "rlm", &RLM_NAMES, &run_matrix, &|m: &Sparse| {
            (m.total() > 0.0).then(|| zone_features(m, m.weighted_total()))
        });
    }
    lap("glrlm");
    let want_zones = settings.wants(Family::Glszm) || settings.wants(Family::Gldzm);
    if want_zones {
        // One distance map and one visited mask serve every slice (slices never touch).
        let dist_2d = distance_to_edge(grid, false);
        let mut seen = vec![false; grid.levels.len()];
        let slices: Vec<(Sparse, Sparse, f64)> = (0..grid.dims[2])
            .map(|z| zones(grid, Some(z), &dist_2d, &mut seen))
            .collect();
        drop(dist_2d);
        seen.fill(false);
        let volume = zones(grid, None, &distance_to_edge(grid, true), &mut seen);
        for (family, names, pick) in [
            (Family::Glszm, &SZM_NAMES, 0usize),
            (Family::Gldzm, &DZM_NAMES, 1usize),
        ] {
            if !settings.wants(family) {
                continue;
            }
            let prefix = if pick == 0 { "szm" } else { "dzm" };
            let choose =
                |t: &(Sparse, Sparse, f64)| if pick == 0 { t.0.clone() } else { t.1.clone() };
            three_way(
                out,
                prefix,
                names,
                slices.iter().map(|t| (choose(t), t.2)).collect(),
                (choose(&volume), volume.2),
            );
        }
    }
    lap("glszm+gldzm");
    if settings.wants(Family::Ngtdm) || settings.wants(Family::Ngldm) {
        // Both families look at the same neighbourhoods: one scan fills both.
        let alpha = settings.texture.ngldm_alpha;
        let per_slice: Vec<(Ngtdm, Sparse)> = (0..grid.dims[2])
            .map(|z| neighbourhood_matrices(grid, Some(z), dist, alpha))
            .collect();
        let (vol_tdm, vol_ldm) = neighbourhood_matrices(grid, None, dist, alpha);
        if settings.wants(Family::Ngtdm) {
            let mut mean = Mean::new();
            let mut merged = Ngtdm::new(grid.n_levels);
            for (s, _) in &per_slice {
                mean.add(ngtdm_features(s));
                merged.add(s);
            }
            let nan = || vec![f64::NAN; NGT_NAMES.len()];
            emit(out, "ngt", &NGT_NAMES, "2D", &mean.get(NGT_NAMES.len()));
            emit(
                out,
                "ngt",
                &NGT_NAMES,
                "2_5D",
                &ngtdm_features(&merged).unwrap_or_else(nan),
            );
            emit(
                out,
                "ngt",
                &NGT_NAMES,
                "3D",
                &ngtdm_features(&vol_tdm).unwrap_or_else(nan),
            );
        }
        if settings.wants(Family::Ngldm) {
            let slices = per_slice
                .into_iter()
                .map(|(_, m)| {
                    let n = m.total();
                    (m, n)
                })
                .collect();
            let n = vol_ldm.total();
            three_way(out, "ngl", &NGL_NAMES, slices, (vol_ldm, n));
        }
    }
    lap("ngtdm, ngldm");
}

/// 2D / 2.5D / 3D for the non-directional matrix families.
fn three_way(
    out: &mut FeatureSink,
    prefix: &str,
    names: &[&str],
    slices: Vec<(Sparse, f64)>,
    volume: (Sparse, f64),
) {
    let mut mean = Mean::new();
    let mut merged = Sparse::default();
    let mut nv = 0.0;
    for (m, n) in &slices {
        if m.total() > 0.0 {
            mean.add(Some(zone_features(m, *n)));
        }
        merged.merge(m);
        nv += n;
    }
    emit(out, prefix, names, "2D", &mean.get(names.len()));
    emit(out, prefix, names, "2_5D", &zone_features(&merged, nv));
    emit(
        out,
        prefix,
        names,
        "3D",
        &zone_features(&volume.0, volume.1),
    );
}

trait Mergeable: Clone {
    fn empty(n_levels: u32) -> Self;
    fn merge(&mut self, other: &Self);
}

/// The six aggregations of a directional family.
fn directional<M: Mergeable>(
    grid: &Grid,
    out: &mut FeatureSink,
    prefix: &str,
    names: &[&str],
    matrix: &dyn Fn(&Grid, Option<usize>, [i64; 3]) -> M,
    features: &dyn Fn(&M) -> Option<Vec<f64>>,
) {
    let ng = grid.n_levels;
    let len = names.len();
    let mut avg_2d = Mean::new();
    let mut comb_2d = Mean::new();
    let mut per_dir: Vec<M> = (0..4).map(|_| M::empty(ng)).collect();
    for z in 0..grid.dims[2] {
        let mut slice_sum = M::empty(ng);
        for (d, dir) in IN_PLANE.iter().enumerate() {
            let m = matrix(grid, Some(z), *dir);
            avg_2d.add(features(&m));
            slice_sum.merge(&m);
            per_dir[d].merge(&m);
        }
        comb_2d.add(features(&slice_sum));
    }
    let mut avg_25 = Mean::new();
    let mut all_25 = M::empty(ng);
    for m in &per_dir {
        avg_25.add(features(m));
        all_25.merge(m);
    }
    let mut avg_3d = Mean::new();
    let mut all_3d = M::empty(ng);
    for (d, dir) in directions_3d().iter().enumerate() {
        // In-plane 3-D matrices are the slice-merged 2-D ones.
        let m = if d < 4 {
            per_dir[d].clone()
        } else {
            matrix(grid, None, *dir)
        };
        avg_3d.add(features(&m));
        all_3d.merge(&m);
    }
    let nan = || vec![f64::NAN; len];
    emit(out, prefix, names, "2D_avg", &avg_2d.get(len));
    emit(out, prefix, names, "2D_comb", &comb_2d.get(len));
    emit(out, prefix, names, "2_5D_avg", &avg_25.get(len));
    emit(
        out,
        prefix,
        names,
        "2_5D_comb",
        &features(&all_25).unwrap_or_else(nan),
    );
    emit(out, prefix, names, "3D_avg", &avg_3d.get(len));
    emit(
        out,
        prefix,
        names,
        "3D_comb",
        &features(&all_3d).unwrap_or_else(nan),
    );
}

// ---------------------------------------------------------------- GLCM

/// Symmetric co-occurrence counts, Ng x Ng.
#[derive(Clone)]
struct Glcm {
    ng: usize,
    counts: Vec<f64>,
}

impl Mergeable for Glcm {
    fn empty(n_levels: u32) -> Self {
        Glcm {
            ng: n_levels as usize,
            counts: vec![0.0; (n_levels as usize).pow(2)],
        }
    }
    fn merge(&mut self, other: &Self) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
    }
}

fn glcm_matrix(grid: &Grid, slice: Option<usize>, dir: [i64; 3], dist: i64) -> Glcm {
    let mut m = Glcm::empty(grid.n_levels);
    let ng = m.ng;
    let [nx, ny, _] = grid.dims;
    let step = grid.offset([dir[0] * dist, dir[1] * dist, dir[2] * dist]);
    for z in grid.slice_range(slice) {
        for y in 0..ny {
            let p0 = grid.flat(0, y, z);
            let row = &grid.levels[nx * (y + ny * z)..nx * (y + ny * z + 1)];
            for (x, &a) in row.iter().enumerate() {
                if a == 0 {
                    continue;
                }
                let b = grid.padded[(p0 + x as i64 + step) as usize];
                if b == 0 {
                    continue;
                }
                let (i, j) = (a as usize - 1, b as usize - 1);
                m.counts[i * ng + j] += 1.0;
                m.counts[j * ng + i] += 1.0;
            }
        }
    }
    m
}

const GLCM_NAMES: [&str; 25] = [
    "joint_max",
    "joint_avg",
    "joint_var",
    "joint_entr",
    "diff_avg",
    "diff_var",
    "diff_entr",
    "sum_avg",
    "sum_var",
    "sum_entr",
    "energy",
    "contrast",
    "dissimilarity",
    "inv_diff",
    "inv_diff_norm",
    "inv_diff_mom",
    "inv_diff_mom_norm",
    "inv_var",
    "corr",
    "auto_corr",
    "clust_tend",
    "clust_shade",
    "clust_prom",
    "info_corr1",
    "info_corr2",
];

fn entropy(p: impl Iterator<Item = f64>) -> f64 {
    -p.filter(|&v| v > 0.0).map(|v| v * v.log2()).sum::<f64>()
}

fn glcm_features(m: &Glcm, n_levels: u32) -> Option<Vec<f64>> {
    let total: f64 = m.counts.iter().sum();
    if total == 0.0 {
        return None;
    }
    let ng = m.ng;
    let ngf = n_levels as f64;
    let p: Vec<f64> = m.counts.iter().map(|c| c / total).collect();
    let mut pi = vec![0.0; ng];
    let mut pd = vec![0.0; ng];
    let mut ps = vec![0.0; 2 * ng + 1];
    let mut joint_max: f64 = 0.0;
    for i in 0..ng {
        for j in 0..ng {
            let v = p[i * ng + j];
            if v == 0.0 {
                continue;
            }
            pi[i] += v;
            pd[i.abs_diff(j)] += v;
            ps[i + j + 2] += v;
            joint_max = joint_max.max(v);
        }
    }
    let mu: f64 = (0..ng).map(|i| (i + 1) as f64 * pi[i]).sum();
    let var: f64 = (0..ng).map(|i| ((i + 1) as f64 - mu).powi(2) * pi[i]).sum();
    let diff_avg: f64 = pd.iter().enumerate().map(|(k, v)| k as f64 * v).sum();
    let diff_var: f64 = pd
        .iter()
        .enumerate()
        .map(|(k, v)| (k as f64 - diff_avg).powi(2) * v)
        .sum();
    let sum_avg: f64 = ps.iter().enumerate().map(|(k, v)| k as f64 * v).sum();
    let sum_var: f64 = ps
        .iter()
        .enumerate()
        .map(|(k, v)| (k as f64 - sum_avg).powi(2) * v)
        .sum();
    let (mut energy, mut contrast, mut dissim, mut inv_diff, mut inv_diff_norm) =
        (0.0, 0.0, 0.0, 0.0, 0.0);
    let (mut idm, mut idmn, mut inv_var, mut auto, mut tend, mut shade, mut prom) =
        (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
    let (mut hxy, mut hxy1, mut hxy2) = (0.0, 0.0, 0.0);
    for i in 0..ng {
        for j in 0..ng {
            let (fi, fj) = ((i + 1) as f64, (j + 1) as f64);
            let pipj = pi[i] * pi[j];
            if pipj > 0.0 {
                hxy2 -= pipj * pipj.log2();
            }
            let v = p[i * ng + j];
            if v == 0.0 {
                continue;
            }
            let d = (fi - fj).abs();
            energy += v * v;
            contrast += d * d * v;
            dissim += d * v;
            inv_diff += v / (1.0 + d);
            inv_diff_norm += v / (1.0 + d / ngf);
            idm += v / (1.0 + d * d);
            idmn += v / (1.0 + d * d / (ngf * ngf));
            if i != j {
                inv_var += v / (d * d);
            }
            auto += fi * fj * v;
            let c = fi + fj - 2.0 * mu;
            tend += c * c * v;
            shade += c * c * c * v;
            prom += c * c * c * c * v;
            hxy -= v * v.log2();
            hxy1 -= v * pipj.log2();
        }
    }
    let hx = entropy(pi.iter().copied());
    let corr = if var > 0.0 {
        (auto - mu * mu) / var
    } else {
        f64::NAN
    };
    let info1 = if hx > 0.0 {
        (hxy - hxy1) / hx
    } else {
        f64::NAN
    };
    let info2 = (1.0 - (-2.0 * (hxy2 - hxy)).exp()).max(0.0).sqrt();
    Some(vec![
        joint_max,
        mu,
        var,
        hxy,
        diff_avg,
        diff_var,
        entropy(pd.iter().copied()),
        sum_avg,
        sum_var,
        entropy(ps.iter().copied()),
        energy,
        contrast,
        dissim,
        inv_diff,
        inv_diff_norm,
        idm,
        idmn,
        inv_var,
        corr,
        auto,
        tend,
        shade,
        prom,
        info1,
        info2,
    ])
}

// ------------------------------------------------ sparse level x count matrices

/// Counts s(i, j) of (grey level i, run length / zone size / distance / dependence j).
#[derive(Clone, Default)]
pub(crate) struct Sparse {
    cells: FastMap<(u32, u32), f64>,
}

impl Sparse {
    fn add(&mut self, i: u32, j: u32) {
        *self.cells.entry((i, j)).or_insert(0.0) += 1.0;
    }
    fn total(&self) -> f64 {
        self.cells.values().sum()
    }
    /// sum of j * s(i, j): the voxels covered by runs or zones.
    fn weighted_total(&self) -> f64 {
        self.cells.iter().map(|(&(_, j), &c)| j as f64 * c).sum()
    }
    fn merge(&mut self, other: &Sparse) {
        for (&k, &c) in &other.cells {
            *self.cells.entry(k).or_insert(0.0) += c;
        }
    }
}

impl Mergeable for Sparse {
    fn empty(_: u32) -> Self {
        Sparse::default()
    }
    fn merge(&mut self, other: &Self) {
        Sparse::merge(self, other);
    }
}

const RLM_NAMES: [&str; 16] = [
    "sre",
    "lre",
    "lgre",
    "hgre",
    "srlge",
    "srhge",
    "lrlge",
    "lrhge",
    "glnu",
    "glnu_norm",
    "rlnu",
    "rlnu_norm",
    "r_perc",
    "gl_var",
    "rl_var",
    "rl_entr",
];
const SZM_NAMES: [&str; 16] = [
    "sze",
    "lze",
    "lgze",
    "hgze",
    "szlge",
    "szhge",
    "lzlge",
    "lzhge",
    "glnu",
    "glnu_norm",
    "zsnu",
    "zsnu_norm",
    "z_perc",
    "gl_var",
    "zs_var",
    "zs_entr",
];
const DZM_NAMES: [&str; 16] = [
    "sde",
    "lde",
    "lgze",
    "hgze",
    "sdlge",
    "sdhge",
    "ldlge",
    "ldhge",
    "glnu",
    "glnu_norm",
    "zdnu",
    "zdnu_norm",
    "z_perc",
    "gl_var",
    "zd_var",
    "zd_entr",
];
const NGL_NAMES: [&str; 17] = [
    "lde",
    "hde",
    "lgce",
    "hgce",
    "ldlge",
    "ldhge",
    "hdlge",
    "hdhge",
    "glnu",
    "glnu_norm",
    "dcnu",
    "dcnu_norm",
    "dc_perc",
    "gl_var",
    "dc_var",
    "dc_entr",
    "dc_energy",
];

/// The features shared by GLRLM, GLSZM, GLDZM and NGLDM, in their common order; the NGLDM's
/// extra dependence-count energy comes last. `nv` is the number of voxels behind the matrix.
fn zone_features(m: &Sparse, nv: f64) -> Vec<f64> {
    let ns: f64 = {
        let mut v: Vec<f64> = m.cells.values().copied().collect();
        v.sort_by(f64::total_cmp);
        v.iter().sum()
    };
    if ns == 0.0 {
        return vec![f64::NAN; 17];
    }
    // Sorted, so that sums run in one order and results are reproducible to the last bit.
    let mut cells: Vec<((u32, u32), f64)> = m.cells.iter().map(|(&k, &c)| (k, c)).collect();
    cells.sort_unstable_by_key(|&(k, _)| k);
    let mut f = [0.0f64; 8];
    let mut rows: BTreeMap<u32, f64> = BTreeMap::new();
    let mut cols: BTreeMap<u32, f64> = BTreeMap::new();
    let (mut mu_i, mut mu_j, mut entr, mut energy) = (0.0, 0.0, 0.0, 0.0);
    for &((i, j), c) in &cells {
        let (i2, j2) = ((i as f64).powi(2), (j as f64).powi(2));
        f[0] += c / j2;
        f[1] += c * j2;
        f[2] += c / i2;
        f[3] += c * i2;
        f[4] += c / (i2 * j2);
        f[5] += c * i2 / j2;
        f[6] += c * j2 / i2;
        f[7] += c * i2 * j2;
        *rows.entry(i).or_insert(0.0) += c;
        *cols.entry(j).or_insert(0.0) += c;
        let p = c / ns;
        mu_i += i as f64 * p;
        mu_j += j as f64 * p;
        entr -= p * p.log2();
        energy += p * p;
    }
    let (mut var_i, mut var_j) = (0.0, 0.0);
    for &((i, j), c) in &cells {
        let p = c / ns;
        var_i += (i as f64 - mu_i).powi(2) * p;
        var_j += (j as f64 - mu_j).powi(2) * p;
    }
    let glnu: f64 = rows.values().map(|v| v * v).sum::<f64>() / ns;
    let jnu: f64 = cols.values().map(|v| v * v).sum::<f64>() / ns;
    let mut out: Vec<f64> = f.iter().map(|v| v / ns).collect();
    out.extend([
        glnu,
        glnu / ns,
        jnu,
        jnu / ns,
        ns / nv,
        var_i,
        var_j,
        entr,
        energy,
    ]);
    out
}

// ---------------------------------------------------------------- GLRLM

fn run_matrix(grid: &Grid, slice: Option<usize>, dir: [i64; 3]) -> Sparse {
    let mut m = Sparse::default();
    let [nx, ny, _] = grid.dims;
    let step = grid.offset(dir);
    for z in grid.slice_range(slice) {
        for y in 0..ny {
            for x in 0..nx {
                let a = grid.levels[x + nx * (y + ny * z)];
                let p = grid.flat(x, y, z);
                // A run starts where the previous voxel along the direction differs; the zero
                // padding ends every run at the box's edge.
                if a == 0 || grid.padded[(p - step) as usize] == a {
                    continue;
                }
                let mut len = 1;
                while grid.padded[(p + step * len) as usize] == a {
                    len += 1;
                }
                m.add(a, len as u32);
            }
        }
    }
    m
}

// ---------------------------------------------------------------- GLSZM and GLDZM

/// Zones of equal grey level (8-connected in a slice, 26-connected in 3-D): the size-zone matrix,
/// the distance-zone matrix and the number of voxels.
fn zones(
    grid: &Grid,
    slice: Option<usize>,
    dist: &[u32],
    seen: &mut [bool],
) -> (Sparse, Sparse, f64) {
    let [nx, ny, _] = grid.dims;
    let mut size_m = Sparse::default();
    let mut dist_m = Sparse::default();
    let mut nv = 0.0;
    let dz = if slice.is_some() { 0 } else { 1 };
    // Neighbour steps as (padded offset, box offset); a neighbour with the zone's level is inside
    // the box (the padding is 0), so its box index is always valid.
    let mut steps = Vec::with_capacity(26);
    for z in -dz..=dz {
        for y in -1i64..=1 {
            for x in -1i64..=1 {
                if (x, y, z) != (0, 0, 0) {
                    steps.push((grid.offset([x, y, z]), x + nx as i64 * (y + ny as i64 * z)));
                }
            }
        }
    }
    let mut stack: Vec<(i64, i64)> = Vec::new();
    for z in grid.slice_range(slice) {
        for y in 0..ny {
            for x in 0..nx {
                let idx = x + nx * (y + ny * z);
                let a = grid.levels[idx];
                if a == 0 || seen[idx] {
                    continue;
                }
                seen[idx] = true;
                stack.push((grid.flat(x, y, z), idx as i64));
                let (mut size, mut dmin) = (0u32, u32::MAX);
                while let Some((p, u)) = stack.pop() {
                    size += 1;
                    dmin = dmin.min(dist[u as usize]);
                    for &(dp, du) in &steps {
                        if grid.padded[(p + dp) as usize] != a {
                            continue;
                        }
                        let j = (u + du) as usize;
                        if !seen[j] {
                            seen[j] = true;
                            stack.push((p + dp, u + du));
                        }
                    }
                }
                size_m.add(a, size);
                dist_m.add(a, dmin);
                nv += size as f64;
            }
        }
    }
    (size_m, dist_m, nv)
}

/// City-block distance (4-connected in a slice, 6-connected in 3-D) from each voxel of the
/// morphological mask to the nearest voxel outside it; a voxel on the edge has distance 1.
fn distance_to_edge(grid: &Grid, three_d: bool) -> Vec<u32> {
    let [nx, ny, nz] = grid.dims;
    let big = u32::MAX / 2;
    let mut d: Vec<u32> = grid
        .morph
        .iter()
        .map(|&m| if m { big } else { 0 })
        .collect();
    let zr = 0..nz;
    let get = |d: &Vec<u32>, x: i64, y: i64, z: i64| -> u32 {
        if x < 0 || y < 0 || x >= nx as i64 || y >= ny as i64 || z < 0 || z >= nz as i64 {
            0
        } else {
            d[x as usize + nx * (y as usize + ny * z as usize)]
        }
    };
    // Two raster passes of the exact L1 distance transform.
    for z in zr.clone() {
        for y in 0..ny {
            for x in 0..nx {
                let i = x + nx * (y + ny * z);
                if d[i] == 0 {
                    continue;
                }
                let (xi, yi, zi) = (x as i64, y as i64, z as i64);
                let mut best = d[i]
                    .min(get(&d, xi - 1, yi, zi) + 1)
                    .min(get(&d, xi, yi - 1, zi) + 1);
                if three_d {
                    best = best.min(get(&d, xi, yi, zi - 1) + 1);
                }
                d[i] = best;
            }
        }
    }
    for z in zr.rev() {
        for y in (0..ny).rev() {
            for x in (0..nx).rev() {
                let i = x + nx * (y + ny * z);
                if d[i] == 0 {
                    continue;
                }
                let (xi, yi, zi) = (x as i64, y as i64, z as i64);
                let mut best = d[i]
                    .min(get(&d, xi + 1, yi, zi) + 1)
                    .min(get(&d, xi, yi + 1, zi) + 1);
                if three_d {
                    best = best.min(get(&d, xi, yi, zi + 1) + 1);
                }
                d[i] = best;
            }
        }
    }
    d
}

// ---------------------------------------------------------------- NGTDM

#[derive(Clone)]
struct Ngtdm {
    s: Vec<f64>,
    n: Vec<f64>,
}

impl Ngtdm {
    fn new(ng: u32) -> Self {
        Ngtdm {
            s: vec![0.0; ng as usize],
            n: vec![0.0; ng as usize],
        }
    }
    fn add(&mut self, o: &Ngtdm) {
        for i in 0..self.s.len() {
            self.s[i] += o.s[i];
            self.n[i] += o.n[i];
        }
    }
}

fn neighbourhood(slice: Option<usize>, dist: i64) -> Vec<[i64; 3]> {
    let dz = if slice.is_some() { 0 } else { dist };
    let mut v = Vec::new();
    for z in -dz..=dz {
        for y in -dist..=dist {
            for x in -dist..=dist {
                if (x, y, z) != (0, 0, 0) {
                    v.push([x, y, z]);
                }
            }
        }
    }
    v
}

/// NGTDM (sums of |level - neighbourhood mean| and counts per level; a voxel counts only with at
/// least one neighbour in the region) and NGLDM (dependence counts from 1) in one neighbourhood
/// scan.
fn neighbourhood_matrices(
    grid: &Grid,
    slice: Option<usize>,
    dist: i64,
    alpha: u32,
) -> (Ngtdm, Sparse) {
    let mut tdm = Ngtdm::new(grid.n_levels);
    let mut ldm = Sparse::default();
    let offsets: Vec<i64> = neighbourhood(slice, dist)
        .into_iter()
        .map(|d| grid.offset(d))
        .collect();
    let [nx, ny, _] = grid.dims;
    for z in grid.slice_range(slice) {
        for y in 0..ny {
            for x in 0..nx {
                let a = grid.levels[x + nx * (y + ny * z)];
                if a == 0 {
                    continue;
                }
                let base = grid.flat(x, y, z);
                let (mut sum, mut cnt, mut dep) = (0u64, 0u32, 1u32);
                for &o in &offsets {
                    let b = grid.padded[(base + o) as usize];
                    if b > 0 {
                        sum += b as u64;
                        cnt += 1;
                        dep += (a.abs_diff(b) <= alpha) as u32;
                    }
                }
                if cnt > 0 {
                    tdm.s[a as usize - 1] += (a as f64 - sum as f64 / cnt as f64).abs();
                    tdm.n[a as usize - 1] += 1.0;
                }
                ldm.add(a, dep);
            }
        }
    }
    (tdm, ldm)
}

const NGT_NAMES: [&str; 5] = [
    "coarseness",
    "contrast",
    "busyness",
    "complexity",
    "strength",
];

fn ngtdm_features(m: &Ngtdm) -> Option<Vec<f64>> {
    let nvc: f64 = m.n.iter().sum();
    if nvc == 0.0 {
        return None;
    }
    let lv: Vec<(f64, f64, f64)> = (0..m.s.len())
        .filter(|&i| m.n[i] > 0.0)
        .map(|i| ((i + 1) as f64, m.n[i] / nvc, m.s[i]))
        .collect();
    let ngp = lv.len() as f64;
    let sum_ps: f64 = lv.iter().map(|&(_, p, s)| p * s).sum();
    let sum_s: f64 = lv.iter().map(|&(_, _, s)| s).sum();
    let (mut c1, mut busy_den, mut complexity, mut strength_num) = (0.0, 0.0, 0.0, 0.0);
    for &(i, pi, si) in &lv {
        for &(j, pj, sj) in &lv {
            c1 += pi * pj * (i - j).powi(2);
            busy_den += (i * pi - j * pj).abs();
            complexity += (i - j).abs() * (pi * si + pj * sj) / (pi + pj);
            strength_num += (pi + pj) * (i - j).powi(2);
        }
    }
    let coarseness = if sum_ps > 0.0 { 1.0 / sum_ps } else { 1e6 };
    let contrast = if ngp > 1.0 {
        c1 / (ngp * (ngp - 1.0)) * sum_s / nvc
    } else {
        0.0
    };
    let busyness = if busy_den > 0.0 {
        sum_ps / busy_den
    } else {
        0.0
    };
    let strength = if sum_s > 0.0 {
        strength_num / sum_s
    } else {
        0.0
    };
    Some(vec![
        coarseness,
        contrast,
        busyness,
        complexity / nvc,
        strength,
    ])
}

// ---------------------------------------------------------------- NGLDM
