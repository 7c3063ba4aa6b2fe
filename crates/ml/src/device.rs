//! Choosing the device: the pure-Rust CPU backend, or CUDA when built with it and present.

use burn::tensor::Device;

/// Where tensors live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceChoice {
    /// burn's pure-Rust `flex` CPU backend (multi-threaded, SIMD).
    Cpu,
    /// A CUDA GPU by index (needs the `cuda` feature and a driver).
    Cuda(usize),
}

impl std::str::FromStr for DeviceChoice {
    type Err = crate::MlError;
    fn from_str(s: &str) -> crate::Result<Self> {
        match s {
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            other => match other.strip_prefix("cuda:").map(str::parse) {
                Some(Ok(i)) => Ok(Self::Cuda(i)),
                _ => Err(crate::MlError::Config(format!(
                    "device {other:?}: expected cpu, cuda or cuda:N"
                ))),
            },
        }
    }
}

/// The device for `choice`, or an error saying why it cannot be had. Never panics: CUDA is
/// probed by looking for the driver library before burn touches it, because burn's CUDA runtime
/// panics when the driver is missing.
pub fn device(choice: DeviceChoice) -> crate::Result<Device> {
    match choice {
        DeviceChoice::Cpu => Ok(Device::flex()),
        DeviceChoice::Cuda(index) => cuda_device(index),
    }
}

#[cfg(feature = "cuda")]
fn cuda_device(index: usize) -> crate::Result<Device> {
    probe_cuda_driver()?;
    // The driver is there, but burn may still panic on an index with no GPU behind it.
    std::panic::catch_unwind(|| {
        let d = Device::cuda(index);
        // Allocating forces the runtime to open the device now rather than mid-training.
        let _ = burn::tensor::Tensor::<1>::zeros([1], &d).into_data();
        d
    })
    .map_err(|_| {
        crate::MlError::Device(format!("cuda:{index}: the CUDA runtime refused the device"))
    })
}

#[cfg(not(feature = "cuda"))]
fn cuda_device(index: usize) -> crate::Result<Device> {
    Err(crate::MlError::Device(format!(
        "cuda:{index}: this build has no CUDA support (rebuild with the `cuda` feature)"
    )))
}

/// Whether the CUDA driver library can be found where the dynamic loader looks.
#[cfg(feature = "cuda")]
fn probe_cuda_driver() -> crate::Result<()> {
    let dirs = std::env::var("LD_LIBRARY_PATH").unwrap_or_default();
    let candidates = dirs
        .split(':')
        .filter(|d| !d.is_empty())
        .map(std::path::PathBuf::from)
        .chain(
            [
                "/usr/lib/x86_64-linux-gnu",
                "/usr/lib64",
                "/usr/lib",
                "/usr/local/cuda/lib64",
                "/usr/lib/wsl/lib",
            ]
            .map(std::path::PathBuf::from),
        );
    for dir in candidates {
        if dir.join("libcuda.so.1").exists() || dir.join("libcuda.so").exists() {
            return Ok(());
        }
    }
    Err(crate::MlError::Device(
        "no CUDA driver (libcuda.so.1) found; use the cpu device".into(),
    ))
}
