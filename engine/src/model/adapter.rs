//! The hook through which LoRA (or any other low-rank adapter) changes a projection's output
//! without touching the shared, immutable base weights.

use tch::Tensor;

/// The seven linear projections of a decoder layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub enum Proj {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

impl Proj {
    pub const ALL: [Proj; 7] = [
        Proj::Q,
        Proj::K,
        Proj::V,
        Proj::O,
        Proj::Gate,
        Proj::Up,
        Proj::Down,
    ];

    /// The module name PEFT uses in `target_modules`.
    pub fn peft_name(self) -> &'static str {
        match self {
            Proj::Q => "q_proj",
            Proj::K => "k_proj",
            Proj::V => "v_proj",
            Proj::O => "o_proj",
            Proj::Gate => "gate_proj",
            Proj::Up => "up_proj",
            Proj::Down => "down_proj",
        }
    }

    /// The path of the module inside a decoder layer, as HF names it.
    pub fn module_path(self) -> &'static str {
        match self {
            Proj::Q => "self_attn.q_proj",
            Proj::K => "self_attn.k_proj",
            Proj::V => "self_attn.v_proj",
            Proj::O => "self_attn.o_proj",
            Proj::Gate => "mlp.gate_proj",
            Proj::Up => "mlp.up_proj",
            Proj::Down => "mlp.down_proj",
        }
    }

    pub fn from_peft_name(name: &str) -> Option<Proj> {
        Proj::ALL.into_iter().find(|p| p.peft_name() == name)
    }
}

/// An adapter's hook into the decoder layers. The model asks once per layer and forward pass
/// for the layer's part (`layer`), so an adapter can prepare its weights for that layer in one
/// go (a cast, a split) instead of once per projection.
pub trait Adapter: Send + Sync {
    /// The adapter's part in decoder layer `layer` for activations of `kind`; None where it
    /// changes nothing there. `train` switches dropout on.
    fn layer(&self, layer: usize, kind: tch::Kind, train: bool) -> Option<Box<dyn LayerAdapter + '_>>;
}

/// One decoder layer's adapter. The model computes some projections fused (Q, K, V as one
/// matmul; Gate, Up as one) and hands each group's output here whole.
pub trait LayerAdapter {
    /// `base` [N, sum of widths] is the output of the projections `group` (in that order,
    /// `widths[i]` columns each) for the rows `input` [N, in]; returns it with the adapter's
    /// update of every projection it adapts added. `base` may be updated in place, so it must be
    /// a fresh output that no backward reads (a matmul's or an add's, as the model passes).
    fn add(&self, group: &[Proj], widths: &[i64], input: &Tensor, base: Tensor) -> Tensor;

    /// The same for projections of equal width computed as a batch: `base` [k, N, width] holds
    /// the output of `group[i]` at `base[i]`; `input` is the rows [N, in], or the rows once per
    /// member [k, N, in] (the batched matmul's own input: an expanded view, or in training a
    /// contiguous copy that dropout may draw on directly). By default member by member through
    /// `add`.
    fn add_stacked(&self, group: &[Proj], input: &Tensor, base: Tensor) -> Tensor {
        add_stacked_one_by_one(self, group, input, base)
    }
}

/// `LayerAdapter::add_stacked` done with `add`, one member at a time.
pub fn add_stacked_one_by_one<A: LayerAdapter + ?Sized>(
    adapter: &A,
    group: &[Proj],
    input: &Tensor,
    base: Tensor,
) -> Tensor {
    let width = base.size()[2];
    // Members by `get` (one view each), not `unbind`: `add` may update its part in place, and
    // autograd refuses in-place updates of a multi-output view such as unbind's when the base
    // requires grad (a training pass that adapts only one of Gate and Up failed so).
    let parts: Vec<Tensor> = group
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let i = i as i64;
            let rows = if input.dim() == 3 {
                input.get(i)
            } else {
                input.shallow_clone()
            };
            adapter.add(&[*p], &[width], &rows, base.get(i))
        })
        .collect();
    Tensor::stack(&parts, 0)
}
