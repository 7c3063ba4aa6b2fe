"""Real brain MRI for the brain-extraction benchmark (issue 15), read in place, never copied
into the repo: colin27 (T1 with skull; ch2bet brain > 0 as the mask) and the ITK T1 (skull-strip
labels > 0) from ../shared/datasets, and the MNI ICBM152 2009a template that the PyPI package
nilearn ships as package data (already skull-stripped; its mask is the template above 20 % of its
maximum, as nilearn's load_mni152_brain_mask draws it). Writes the MNI mask and one manifest per
fold (each real brain with a skull held out once) into WORK."""
import os
import sys

import nibabel as nib
import nilearn
import numpy as np

work = sys.argv[1]
shared = os.path.abspath(os.path.join(os.path.dirname(__file__), "../../../shared/datasets"))
data = os.path.join(os.path.dirname(nilearn.__file__), "datasets", "data")
mni = os.path.join(data, "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz")
img = nib.load(mni)
a = np.asanyarray(img.dataobj)
mask = os.path.join(work, "mni152_mask.nii.gz")
nib.save(nib.Nifti1Image((a > 0.2 * a.max()).astype(np.uint8), img.affine), mask)
cases = {
    "colin27": (f"{shared}/colin27_aal_mri/ch2_t1.nii.gz", f"{shared}/colin27_aal_mri/ch2bet_brain.nii.gz"),
    "itk_t1": (f"{shared}/itk_brain_t1_kmeans/t1.nii.gz", f"{shared}/itk_brain_t1_kmeans/skullstrip_labels.nii.gz"),
    "mni152": (mni, mask),
}
for held_out in ("itk_t1", "colin27"):
    with open(os.path.join(work, f"fold-{held_out}.csv"), "w") as f:
        f.write("id,image,label,split\n")
        for cid, (image, label) in cases.items():
            f.write(f"{cid},{image},{label},{'test' if cid == held_out else 'train'}\n")
print("manifests in", work)
