//! 3-D convex hull of mesh vertices, in exact integer arithmetic.
//!
//! Mesh vertices lie on a half-voxel lattice, so they are heavily coplanar; floating-point hull
//! codes stumble on that. Here orientation tests are exact (`i128`), and scaling to millimetres
//! happens only when volume and area are summed (an axis scaling maps a hull onto a hull).

use std::collections::HashSet;

use crate::FastMap;

use crate::morphology::{cross, dot, norm, sub};

pub struct ConvexHull {
    /// Triangles, outward oriented, as indices into the input points.
    pub faces: Vec<[usize; 3]>,
}

fn orient(a: [i64; 3], b: [i64; 3], c: [i64; 3], p: [i64; 3]) -> i128 {
    let u = [
        (b[0] - a[0]) as i128,
        (b[1] - a[1]) as i128,
        (b[2] - a[2]) as i128,
    ];
    let v = [
        (c[0] - a[0]) as i128,
        (c[1] - a[1]) as i128,
        (c[2] - a[2]) as i128,
    ];
    let w = [
        (p[0] - a[0]) as i128,
        (p[1] - a[1]) as i128,
        (p[2] - a[2]) as i128,
    ];
    let n = [
        u[1] * v[2] - u[2] * v[1],
        u[2] * v[0] - u[0] * v[2],
        u[0] * v[1] - u[1] * v[0],
    ];
    n[0] * w[0] + n[1] * w[1] + n[2] * w[2]
}

struct Face {
    v: [usize; 3],
    alive: bool,
    outside: Vec<usize>,
}

impl ConvexHull {
    /// Hull of `points`; empty when all points are coplanar.
    pub fn of_points(points: &[[i64; 3]]) -> ConvexHull {
        let candidates = extreme_along_lines(points);
        let p = |i: usize| points[i];
        let empty = ConvexHull { faces: Vec::new() };
        if candidates.len() < 4 {
            return empty;
        }
        // Initial tetrahedron.
        let a = *candidates
            .iter()
            .min_by_key(|&&i| p(i))
            .unwrap_or(&candidates[0]);
        let d2 = |i: usize, j: usize| {
            let d = [p(i)[0] - p(j)[0], p(i)[1] - p(j)[1], p(i)[2] - p(j)[2]];
            (d[0] * d[0] + d[1] * d[1] + d[2] * d[2]) as i128
        };
        let b = *candidates.iter().max_by_key(|&&i| d2(i, a)).unwrap_or(&a);
        let line = |i: usize| {
            let u = [p(b)[0] - p(a)[0], p(b)[1] - p(a)[1], p(b)[2] - p(a)[2]];
            let w = [p(i)[0] - p(a)[0], p(i)[1] - p(a)[1], p(i)[2] - p(a)[2]];
            let c = [
                (u[1] * w[2] - u[2] * w[1]) as i128,
                (u[2] * w[0] - u[0] * w[2]) as i128,
                (u[0] * w[1] - u[1] * w[0]) as i128,
            ];
            c[0] * c[0] + c[1] * c[1] + c[2] * c[2]
        };
        let c = *candidates.iter().max_by_key(|&&i| line(i)).unwrap_or(&a);
        if line(c) == 0 {
            return empty;
        }
        let d = *candidates
            .iter()
            .max_by_key(|&&i| orient(p(a), p(b), p(c), p(i)).abs())
            .unwrap_or(&a);
        if orient(p(a), p(b), p(c), p(d)) == 0 {
            return empty;
        }
        let mut faces: Vec<Face> = Vec::new();
        let mut edges: FastMap<(usize, usize), usize> = FastMap::default();
        let add =
            |faces: &mut Vec<Face>, edges: &mut FastMap<(usize, usize), usize>, v: [usize; 3]| {
                let id = faces.len();
                for k in 0..3 {
                    edges.insert((v[k], v[(k + 1) % 3]), id);
                }
                faces.push(Face {
                    v,
                    alive: true,
                    outside: Vec::new(),
                });
                id
            };
        // Orient each initial face away from the fourth point.
        for (x, y, z, w) in [(a, b, c, d), (a, b, d, c), (a, c, d, b), (b, c, d, a)] {
            let v = if orient(p(x), p(y), p(z), p(w)) > 0 {
                [x, z, y]
            } else {
                [x, y, z]
            };
            add(&mut faces, &mut edges, v);
        }
        let assign = |faces: &mut Vec<Face>, ids: &[usize], pts: &[usize]| {
            for &q in pts {
                for &f in ids {
                    let v = faces[f].v;
                    if orient(p(v[0]), p(v[1]), p(v[2]), p(q)) > 0 {
                        faces[f].outside.push(q);
                        break;
                    }
                }
            }
        };
        let rest: Vec<usize> = candidates
            .iter()
            .copied()
            .filter(|&i| i != a && i != b && i != c && i != d)
            .collect();
        assign(&mut faces, &[0, 1, 2, 3], &rest);
        let mut work: Vec<usize> = (0..4).collect();
        while let Some(f) = work.pop() {
            if !faces[f].alive || faces[f].outside.is_empty() {
                continue;
            }
            let v = faces[f].v;
            let apex = *faces[f]
                .outside
                .iter()
                .max_by_key(|&&q| orient(p(v[0]), p(v[1]), p(v[2]), p(q)))
                .unwrap_or(&faces[f].outside[0]);
            // Faces that see the apex, found by walking across edges from f.
            let mut visible = vec![f];
            let mut seen: HashSet<usize> = HashSet::from([f]);
            let mut horizon = Vec::new();
            let mut i = 0;
            while i < visible.len() {
                let fv = faces[visible[i]].v;
                for k in 0..3 {
                    let (e0, e1) = (fv[k], fv[(k + 1) % 3]);
                    let Some(&nb) = edges.get(&(e1, e0)) else {
                        continue;
                    };
                    if seen.contains(&nb) {
                        if !visible.contains(&nb) {
                            horizon.push((e0, e1));
                        }
                        continue;
                    }
                    let nv = faces[nb].v;
                    if orient(p(nv[0]), p(nv[1]), p(nv[2]), p(apex)) > 0 {
                        seen.insert(nb);
                        visible.push(nb);
                    } else {
                        seen.insert(nb);
                        horizon.push((e0, e1));
                    }
                }
                i += 1;
            }
            // An edge first recorded as horizon may later turn out to border a visible face.
            let visible_set: HashSet<usize> = visible.iter().copied().collect();
            horizon.retain(|&(e0, e1)| {
                edges
                    .get(&(e1, e0))
                    .is_some_and(|nb| !visible_set.contains(nb))
            });
            let mut orphans = Vec::new();
            for &vf in &visible {
                faces[vf].alive = false;
                orphans.append(&mut faces[vf].outside);
                let fv = faces[vf].v;
                for k in 0..3 {
                    edges.remove(&(fv[k], fv[(k + 1) % 3]));
                }
            }
            orphans.retain(|&q| q != apex);
            let new: Vec<usize> = horizon
                .iter()
                .map(|&(e0, e1)| add(&mut faces, &mut edges, [e0, e1, apex]))
                .collect();
            assign(&mut faces, &new, &orphans);
            work.extend(new);
        }
        ConvexHull {
            faces: faces.into_iter().filter(|f| f.alive).map(|f| f.v).collect(),
        }
    }

    /// Indices of the points that are hull vertices.
    pub fn vertex_indices(&self) -> Vec<usize> {
        let mut v: Vec<usize> = self.faces.iter().flatten().copied().collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// Volume (mm^3) and area (mm^2) with points in doubled voxel units scaled by `spacing`.
    pub fn volume_and_area(&self, points: &[[i64; 3]], spacing: [f64; 3]) -> (f64, f64) {
        let mm = |i: usize| -> [f64; 3] {
            std::array::from_fn(|k| points[i][k] as f64 * 0.5 * spacing[k])
        };
        let (mut vol, mut area) = (0.0, 0.0);
        for f in &self.faces {
            let [a, b, c] = f.map(mm);
            vol += dot(a, cross(b, c));
            area += norm(cross(sub(b, a), sub(c, a)));
        }
        (vol.abs() / 6.0, area / 2.0)
    }
}

/// Points that are the first or last along every axis-parallel line through them: any other
/// point lies between two points of the set and cannot be a hull vertex.
fn extreme_along_lines(points: &[[i64; 3]]) -> Vec<usize> {
    let mut keep = vec![0u8; points.len()];
    for axis in 0..3 {
        let mut ends: FastMap<(i64, i64), (usize, usize)> = FastMap::default();
        let (u, w) = ((axis + 1) % 3, (axis + 2) % 3);
        for (i, p) in points.iter().enumerate() {
            let e = ends.entry((p[u], p[w])).or_insert((i, i));
            if p[axis] < points[e.0][axis] {
                e.0 = i;
            }
            if p[axis] > points[e.1][axis] {
                e.1 = i;
            }
        }
        for (lo, hi) in ends.values() {
            keep[*lo] |= 1 << axis;
            keep[*hi] |= 1 << axis;
        }
    }
    (0..points.len()).filter(|&i| keep[i] == 7).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cube_with_interior_and_face_points() {
        let mut pts = Vec::new();
        for x in 0..5 {
            for y in 0..5 {
                for z in 0..5 {
                    pts.push([x, y, z]);
                }
            }
        }
        let h = ConvexHull::of_points(&pts);
        let (v, a) = h.volume_and_area(&pts, [2.0, 2.0, 2.0]);
        assert!((v - 64.0).abs() < 1e-9, "{v}");
        assert!((a - 96.0).abs() < 1e-9, "{a}");
        assert_eq!(h.vertex_indices().len(), 8);
    }

    #[test]
    fn coplanar_points_have_no_hull() {
        let pts: Vec<[i64; 3]> = (0..10).map(|i| [i, i * i % 7, 3]).collect();
        assert!(ConvexHull::of_points(&pts).faces.is_empty());
    }

    #[test]
    fn octahedron_from_lattice_points() {
        let pts = vec![
            [1, 0, 0],
            [-1, 0, 0],
            [0, 1, 0],
            [0, -1, 0],
            [0, 0, 1],
            [0, 0, -1],
            [0, 0, 0],
        ];
        let h = ConvexHull::of_points(&pts);
        let (v, _) = h.volume_and_area(&pts, [2.0; 3]);
        assert!((v - 4.0 / 3.0).abs() < 1e-12, "{v}");
        assert_eq!(h.faces.len(), 8);
    }
}
