"""The simple baseline of brain extraction beside the U-Net (issue 15): k-means on the
intensities (scikit-learn; the threshold halfway between the two darkest cluster centres), then
the classic morphology: erode, keep the largest connected component, dilate back inside the
threshold mask, fill holes (scipy.ndimage). The baseline is given every advantage: it is run with
k in {2, 3} and erosion of 1-4 voxels and the best Dice against the held-out brain's own mask is
reported (an upper bound of what the baseline would score untuned).
Usage: baseline.py IMAGE LABEL   (prints: dice k erosion)"""
import sys

import nibabel as nib
import numpy as np
from scipy import ndimage
from sklearn.cluster import KMeans

image = np.asanyarray(nib.load(sys.argv[1]).dataobj).astype(np.float32)
truth = np.asanyarray(nib.load(sys.argv[2]).dataobj) > 0
head = image[image > 0].reshape(-1, 1)
sample = head[np.random.default_rng(0).permutation(len(head))[:200_000]]
ball = ndimage.generate_binary_structure(3, 1)
best = (0.0, 0, 0)
for k in (2, 3):
    centres = np.sort(KMeans(n_clusters=k, n_init=10, random_state=0).fit(sample).cluster_centers_.ravel())
    fg = image > (centres[0] + centres[1]) / 2
    for erosion in (1, 2, 3, 4):
        core = ndimage.binary_erosion(fg, ball, iterations=erosion)
        lab, n = ndimage.label(core)
        if n == 0:
            continue
        core = lab == (1 + int(np.argmax(ndimage.sum(core, lab, range(1, n + 1)))))
        brain = ndimage.binary_fill_holes(ndimage.binary_dilation(core, ball, iterations=erosion) & fg)
        dice = 2 * (brain & truth).sum() / (brain.sum() + truth.sum())
        best = max(best, (dice, k, erosion))
print(f"{best[0]:.4f} {best[1]} {best[2]}")
