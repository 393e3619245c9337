//! Packed causal attention on CUDA through FlashAttention-2's variable-length kernel (libtorch's
//! `_flash_attention_forward` with cumulative sequence lengths, called from engine/csrc).
//!
//! A padding-free training pass holds many sequences of different lengths back to back. The
//! memory-efficient kernel needs them laid out as a right-padded batch, with the kv heads
//! repeated (it has no grouped-query mode): two layout copies a layer and a quadratic cost in
//! the longest sequence for every sequence. The variable-length kernel reads the packed rows
//! where they are, groups the query heads itself, and its backward (libtorch's
//! FlashAttentionBackward0) writes the packed gradients directly.
//!
//! The kernel exists for bf16 and f16 on NVIDIA GPUs of compute capability 8.0 and later, with
//! head_dim at most 256. Where it cannot run (another kind, an older GPU, a libtorch built
//! without it) the first failure is logged once and the padded path is used from then on.
//! `PSPACE_ATTENTION=padded` selects the padded path from the start (to compare the two).

use std::ffi::{c_char, CStr};
use std::sync::atomic::{AtomicU8, Ordering};
use tch::{Kind, Tensor};
use torch_sys::C_tensor;

extern "C" {
    fn pspace_flash_varlen_causal(
        query: *const C_tensor,
        key: *const C_tensor,
        value: *const C_tensor,
        cu_seqlens: *const C_tensor,
        max_len: i64,
        out: *mut *mut C_tensor,
    ) -> *mut c_char;
    fn pspace_free_message(message: *mut c_char);
}

const UNDECIDED: u8 = 0;
const ON: u8 = 1;
const OFF: u8 = 2;

/// Whether packed passes use the variable-length kernel: undecided until the first use.
static STATE: AtomicU8 = AtomicU8::new(UNDECIDED);

/// `PSPACE_ATTENTION`: unset, "" or "flash" (the variable-length kernel where it can run) is
/// Ok(false); "padded" is Ok(true); anything else is an error that says what was expected. The
/// binary checks it at start-up, so a mistyped value stops before any work.
pub fn padded_attention_requested() -> Result<bool, String> {
    match std::env::var("PSPACE_ATTENTION") {
        Err(_) => Ok(false),
        Ok(v) if v.is_empty() || v == "flash" => Ok(false),
        Ok(v) if v == "padded" => Ok(true),
        Ok(v) => Err(format!(
            "PSPACE_ATTENTION: expected \"flash\" (the default) or \"padded\", found {v:?}"
        )),
    }
}

/// Whether the variable-length kernel may be tried for q of this kind, on this device, with
/// this head size (and was neither switched off nor found failing).
pub(crate) fn usable(q: &Tensor) -> bool {
    let head_dim = q.size().last().copied().unwrap_or(0);
    switched_on(q.device(), q.kind()) && head_dim % 8 == 0 && head_dim <= 256
}

/// Whether packed passes on `device` in `kind` go to the variable-length kernel.
fn switched_on(device: tch::Device, kind: Kind) -> bool {
    let state = match STATE.load(Ordering::Relaxed) {
        UNDECIDED => {
            let state = if padded_attention_requested().unwrap_or(false) {
                OFF
            } else {
                ON
            };
            STATE.store(state, Ordering::Relaxed);
            state
        }
        s => s,
    };
    state == ON && device.is_cuda() && matches!(kind, Kind::BFloat16 | Kind::Half)
}

/// The attention kernel a packed (padding-free) pass on `device` in `kind` runs now, as the
/// training log records it: "flash_varlen" (FlashAttention-2's variable-length kernel),
/// "padded_memory_efficient" (CUDA: switched off, failed, or a kind it lacks) or "padded_sdpa"
/// (a CPU).
pub fn packed_attention_kernel(device: tch::Device, kind: Kind) -> &'static str {
    if !device.is_cuda() {
        "padded_sdpa"
    } else if switched_on(device, kind) {
        "flash_varlen"
    } else {
        "padded_memory_efficient"
    }
}

/// Causal attention within each of the sequences laid back to back in q [total, heads,
/// head_dim], k and v [total, kv_heads, head_dim] (heads a multiple of kv_heads; HF's grouping:
/// query head h reads kv head h / (heads / kv_heads)); sequence i is rows cu_seqlens[i] ..
/// cu_seqlens[i + 1] (int32 [S + 1] on q's device); `max_len` the longest. Output [total, heads,
/// head_dim]. None when the kernel failed: the failure is logged once and the kernel is not
/// tried again in this process.
pub(crate) fn varlen_causal(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    cu_seqlens: &Tensor,
    max_len: i64,
) -> Option<Tensor> {
    let mut out: *mut C_tensor = std::ptr::null_mut();
    // SAFETY: the handles are live tch tensors borrowed for the call; on success `out` is a new
    // handle that the returned Tensor owns (tch frees it on drop).
    let message = unsafe {
        pspace_flash_varlen_causal(
            q.as_ptr(),
            k.as_ptr(),
            v.as_ptr(),
            cu_seqlens.as_ptr(),
            max_len,
            &mut out,
        )
    };
    if message.is_null() && !out.is_null() {
        // SAFETY: `out` came from `new at::Tensor` in the shim, as tch's own handles do.
        return Some(unsafe { Tensor::from_ptr(out) });
    }
    let text = if message.is_null() {
        "no output".to_string()
    } else {
        // SAFETY: a NUL-terminated string from strdup, freed by the shim's free after copying.
        let text = unsafe { CStr::from_ptr(message) }.to_string_lossy().into_owned();
        unsafe { pspace_free_message(message) };
        text
    };
    if STATE.swap(OFF, Ordering::Relaxed) != OFF {
        tracing::warn!(
            "FlashAttention-2 variable-length kernel unavailable ({}); packed passes use the padded memory-efficient kernel",
            text.lines().next().unwrap_or("")
        );
    }
    None
}
