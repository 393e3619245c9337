//! AdamW and global-norm gradient clipping with the arithmetic of `torch.optim.AdamW`
//! (single-tensor path) and `torch.nn.utils.clip_grad_norm_`: decoupled weight decay applied to
//! the parameter first, moments by lerp and addcmul, bias corrections folded into the step size
//! and the denominator in the same order, so f32 runs agree with PyTorch to rounding.

use tch::{Kind, Tensor};

#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AdamWConfig {
    pub betas: (f64, f64),
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

pub struct AdamW {
    config: AdamWConfig,
    params: Vec<Tensor>,
    exp_avg: Vec<Tensor>,
    exp_avg_sq: Vec<Tensor>,
    steps: u64,
}

impl AdamW {
    pub fn new(params: Vec<Tensor>, config: AdamWConfig) -> AdamW {
        let _guard = tch::no_grad_guard();
        let exp_avg = params.iter().map(Tensor::zeros_like).collect();
        let exp_avg_sq = params.iter().map(Tensor::zeros_like).collect();
        AdamW {
            config,
            params,
            exp_avg,
            exp_avg_sq,
            steps: 0,
        }
    }

    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// One update with learning rate `lr` from `grads` (one per parameter, same shapes).
    pub fn step(&mut self, lr: f64, grads: &[Tensor]) {
        let _guard = tch::no_grad_guard();
        self.steps += 1;
        let (beta1, beta2) = self.config.betas;
        let bias_correction1 = 1.0 - beta1.powi(self.steps as i32);
        let bias_correction2 = 1.0 - beta2.powi(self.steps as i32);
        let step_size = lr / bias_correction1;
        let bias_correction2_sqrt = bias_correction2.sqrt();
        for (((param, exp_avg), exp_avg_sq), grad) in self
            .params
            .iter_mut()
            .zip(self.exp_avg.iter_mut())
            .zip(self.exp_avg_sq.iter_mut())
            .zip(grads)
        {
            if !grad.defined() {
                continue;
            }
            if self.config.weight_decay != 0.0 {
                let _ = param.g_mul_scalar_(1.0 - lr * self.config.weight_decay);
            }
            let _ = exp_avg.lerp_(grad, 1.0 - beta1);
            let _ = exp_avg_sq.g_mul_scalar_(beta2);
            // addcmul(value=1-beta2) computes value * g * g left to right.
            let _ = exp_avg_sq.g_add_(&(grad * (1.0 - beta2) * grad));
            let denom = exp_avg_sq.sqrt() / bias_correction2_sqrt + self.config.eps;
            // addcdiv(value=-step_size) computes value * m / denom left to right.
            let _ = param.g_add_(&(&*exp_avg * -step_size / denom));
        }
    }
}

/// The global L2 norm of `grads` (before clipping); with `max_norm`, the gradients are scaled
/// in place by min(1, max_norm / (norm + 1e-6)) as `clip_grad_norm_` does.
pub fn clip_grad_norm(grads: &[Tensor], max_norm: Option<f64>) -> f64 {
    let _guard = tch::no_grad_guard();
    let grads: Vec<Tensor> = grads
        .iter()
        .filter(|g| g.defined())
        .map(Tensor::shallow_clone)
        .collect();
    if grads.is_empty() {
        return 0.0;
    }
    let norms: Vec<Tensor> = grads.iter().map(|g| g.to_kind(Kind::Float).norm()).collect();
    let total = Tensor::stack(&norms, 0).norm();
    if let Some(max_norm) = max_norm {
        let coef = (max_norm / (&total + 1e-6)).clamp_max(1.0);
        for mut g in grads {
            let _ = g.g_mul_(&coef.to_kind(g.kind()));
        }
    }
    total.double_value(&[])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two AdamW steps on f(p) = sum(p^2) with weight decay, against the update written out
    /// by hand from the formulas of torch.optim.AdamW.
    #[test]
    fn adamw_matches_the_torch_formulas() {
        let p = Tensor::from_slice(&[1.0f32, -2.0, 0.5]).set_requires_grad(true);
        let cfg = AdamWConfig {
            betas: (0.9, 0.99),
            eps: 1e-8,
            weight_decay: 0.1,
        };
        let mut opt = AdamW::new(vec![p.shallow_clone()], cfg);
        let mut expected = [1.0f64, -2.0, 0.5];
        let (mut m, mut v) = (vec![0.0f64; 3], vec![0.0f64; 3]);
        for step in 1..=2 {
            let lr = 0.1 * step as f64;
            let mut q = p.shallow_clone();
            q.zero_grad();
            (&p * &p).sum(Kind::Float).backward();
            opt.step(lr, &[p.grad()]);
            for i in 0..3 {
                let g = 2.0 * expected[i];
                expected[i] *= 1.0 - lr * 0.1;
                m[i] = 0.9 * m[i] + 0.1 * g;
                v[i] = 0.99 * v[i] + 0.01 * g * g;
                let bc1 = 1.0 - 0.9f64.powi(step);
                let bc2 = 1.0 - 0.99f64.powi(step);
                expected[i] -= lr / bc1 * m[i] / ((v[i] / bc2).sqrt() + 1e-8);
            }
        }
        let got = Vec::<f32>::try_from(&p.detach()).unwrap();
        for i in 0..3 {
            assert!(
                (got[i] as f64 - expected[i]).abs() < 1e-5,
                "{i}: {} vs {}",
                got[i],
                expected[i]
            );
        }
    }

    #[test]
    fn clipping_scales_to_the_max_norm_only_when_above() {
        let a = Tensor::from_slice(&[0.0f32, 0.0]).set_requires_grad(true);
        let b = Tensor::from_slice(&[0.0f32]).set_requires_grad(true);
        let loss = (&a * Tensor::from_slice(&[3.0f32, 0.0])).sum(Kind::Float) + (&b * 4.0).sum(Kind::Float);
        loss.backward();
        let grads = [a.grad(), b.grad()];
        let norm = clip_grad_norm(&grads, Some(10.0));
        assert!((norm - 5.0).abs() < 1e-6);
        assert!(
            (a.grad().double_value(&[0]) - 3.0).abs() < 1e-6,
            "below the max: unchanged"
        );
        let norm = clip_grad_norm(&grads, Some(1.0));
        assert!((norm - 5.0).abs() < 1e-6);
        assert!((a.grad().double_value(&[0]) - 0.6).abs() < 1e-6);
        assert!((b.grad().double_value(&[0]) - 0.8).abs() < 1e-6);
    }
}
