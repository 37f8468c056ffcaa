"""sidrec: semantic-ID generative recommendation benchmark harness."""

import logging
import warnings

# faiss logs which SIMD build it probes (AVX512, AVX2, generic) at INFO on every import; a
# failed import still raises, so only the probe chatter is dropped.
logging.getLogger("faiss.loader").setLevel(logging.WARNING)
# Optuna flags features such as the GridSampler's options as experimental on every use; the
# studies pin Optuna's version, so the notice says nothing actionable.
warnings.filterwarnings(
    "ignore", message=r".*(is experimental \(supported from v|is an experimental feature\.)"
)
