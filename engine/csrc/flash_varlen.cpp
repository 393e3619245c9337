// Packed (variable-length) causal attention through libtorch's FlashAttention-2 kernel,
// `at::_flash_attention_forward` with cumulative sequence lengths. tch 0.24 binds no forward of
// that operator (it returns symbolic integers), so this one call is made here; the operator's
// autograd formula (FlashAttentionBackward0) records the backward as for any libtorch op.
//
// Tensors cross the boundary as tch's handles (`at::Tensor*`). No C++ exception may unwind
// into Rust: every failure comes back as a message the caller frees with pspace_free_message.
#include <ATen/ATen.h>

#include <cstdlib>
#include <cstring>
#include <exception>

extern "C" {

// query [total, heads, head_dim], key and value [total, kv_heads, head_dim] (heads a multiple
// of kv_heads: the kernel groups query heads itself), cu_seqlens int32 [sequences + 1],
// max_len the longest sequence. On success *out is a new handle to the output [total, heads,
// head_dim] and the result is null; otherwise the result is an error message.
char* pspace_flash_varlen_causal(const at::Tensor* query, const at::Tensor* key,
                                 const at::Tensor* value, const at::Tensor* cu_seqlens,
                                 int64_t max_len, at::Tensor** out) {
  try {
    auto result = at::_flash_attention_forward(*query, *key, *value, *cu_seqlens, *cu_seqlens,
                                               max_len, max_len, 0.0, /*is_causal=*/true,
                                               /*return_debug_mask=*/false);
    *out = new at::Tensor(std::get<0>(result));
    return nullptr;
  } catch (const std::exception& e) {
    return strdup(e.what());
  } catch (...) {
    return strdup("unknown C++ exception in _flash_attention_forward");
  }
}

void pspace_free_message(char* message) { free(message); }

}  // extern "C"
