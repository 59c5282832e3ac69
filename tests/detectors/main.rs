//! The detectors' statistical tests, in one binary: restore equivalence and robustness
//! (`behaviour`), and calibration and power (`calibration`).

mod behaviour;
mod calibration;
