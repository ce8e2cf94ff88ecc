"""scimap 2.3.6's spatial_interaction on MCMICRO exemplar-001 (scimapExampleData.h5ad), kNN
graph with k = 10, 1000 permutations, z-score p-values: the peer's table for
tests/test_analysis.py. Runs in .venv-scimap (see run_scimap.sh): scimap pins zarr 2.10.3 and
cannot share squidpy >= 1.8.2's environment.

    .venv-scimap/bin/python benchmarks/peers/scimap_interaction.py [DATA_DIR]
"""

import sys
from datetime import date
from importlib.metadata import version
from pathlib import Path

import anndata as ad
import numpy as np
import scimap as sm

data = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parents[3] / "shared/data/cells/cycif-exemplar001")
out = Path(__file__).resolve().parent / "scimap"
out.mkdir(exist_ok=True)
adata = ad.read_h5ad(data / "scimapExampleData.h5ad")
np.random.seed(0)  # scimap permutes with numpy's global generator
adata = sm.tl.spatial_interaction(adata, method="knn", knn=10, permutation=1000, pval_method="zscore",
                                  verbose=False, label="si_knn10")
table = adata.uns["si_knn10"]
table.to_csv(out / "spatial_interaction_knn10.csv", index=False)
print(table.head())
(out / "README.md").write_text(
    "# scimap's spatial_interaction on MCMICRO exemplar-001\n\n"
    f"Recorded {date.today()} by `benchmarks/peers/run_scimap.sh` with scimap {version('scimap')} in "
    ".venv-scimap: `sm.tl.spatial_interaction(adata, method='knn', knn=10, permutation=1000, "
    "pval_method='zscore')` on `scimapExampleData.h5ad` (11,201 cells, 8 phenotypes), numpy seed 0.\n"
    "Columns: `phenotype`, `neighbour_phenotype`, then per image the mean neighbour-count difference "
    "from the permuted expectation (sign = enriched/depleted) and `pvalue_<imageid>`.\n"
    "Data: MIT (scimap); see ../shared/data/cells/cycif-exemplar001/PROVENANCE.txt.\n")
