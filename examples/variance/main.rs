//! The variance of Adam's adaptive learning rate in the first steps, and what RAdam's
//! rectification term does to it (Liu et al. 2019, Section 3 and 4, Figure 1-style simulation).
//!
//! Gradients are drawn i.i.d. from N(mu, 1). For every step t the simulation records, over many
//! independent runs, the variance of Adam's adaptive learning rate
//! `psi_t = 1 / sqrt(v_hat_t)` (with bias correction `v_hat_t = v_t / (1 - beta2^t)`) and of the
//! rectified one `r_t * psi_t`, where
//! `r_t = sqrt((rho_t - 4)(rho_t - 2) rho_inf / ((rho_inf - 4)(rho_inf - 2) rho_t))`,
//! `rho_inf = 2 / (1 - beta2) - 1`, `rho_t = rho_inf - 2 t beta2^t / (1 - beta2^t)`
//! (defined for rho_t > 4; RAdam takes un-adapted momentum steps while rho_t <= 5).
//!
//! ```text
//! cargo run --release --example variance                  # table + docs/variance.png
//! cargo run --release --example variance -- --mus 0,1,10 --steps 10000 --runs 4000 --beta2 0.999 --out docs/variance.png
//! ```

use anyhow::{anyhow, Result};
use clap::Parser;
use plotters::prelude::*;
use plotters::style::FontStyle;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::path::PathBuf;

static FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");

#[derive(Parser, Debug)]
#[command(
    about = "Monte Carlo variance of Adam's adaptive learning rate vs. RAdam's rectified one"
)]
struct Args {
    /// Means of the N(mu, 1) gradient distribution, one curve panel each.
    #[arg(long, value_delimiter = ',', default_values_t = vec![0.0, 1.0, 10.0])]
    mus: Vec<f64>,
    /// Steps simulated.
    #[arg(long, default_value_t = 10000)]
    steps: usize,
    /// Independent runs per step (the Monte Carlo sample size).
    #[arg(long, default_value_t = 4000)]
    runs: usize,
    #[arg(long, default_value_t = 0.999)]
    beta2: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// PNG output.
    #[arg(long, default_value = "out/variance.png")]
    out: PathBuf,
}

/// `rho_inf`, the maximum length of the approximated simple moving average.
pub fn rho_inf(beta2: f64) -> f64 {
    2.0 / (1.0 - beta2) - 1.0
}

/// `rho_t` at step `t` (1-based).
pub fn rho_t(beta2: f64, t: usize) -> f64 {
    let b = beta2.powi(t as i32);
    rho_inf(beta2) - 2.0 * t as f64 * b / (1.0 - b)
}

/// The rectification term, `None` while `rho_t <= 4` (undefined there).
pub fn r_t(beta2: f64, t: usize) -> Option<f64> {
    let (ri, rt) = (rho_inf(beta2), rho_t(beta2, t));
    (rt > 4.0).then(|| ((rt - 4.0) * (rt - 2.0) * ri / ((ri - 4.0) * (ri - 2.0) * rt)).sqrt())
}

/// Per-step variances over `runs` simulated trajectories.
pub struct Curves {
    /// Var[psi_t], t = 1..=steps.
    pub adam: Vec<f64>,
    /// Var[r_t psi_t] where r_t is defined, else NaN.
    pub radam: Vec<f64>,
}

fn normal(rng: &mut SmallRng) -> f64 {
    let u1: f64 = 1.0 - rng.random::<f64>();
    let u2: f64 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

pub fn simulate(mu: f64, beta2: f64, steps: usize, runs: usize, seed: u64) -> Curves {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut v = vec![0f64; runs];
    let mut adam = Vec::with_capacity(steps);
    let mut radam = Vec::with_capacity(steps);
    for t in 1..=steps {
        let bc = 1.0 - beta2.powi(t as i32);
        // Welford over the runs.
        let (mut n, mut mean, mut m2) = (0f64, 0f64, 0f64);
        for vi in v.iter_mut() {
            let g = mu + normal(&mut rng);
            *vi = beta2 * *vi + (1.0 - beta2) * g * g;
            let psi = 1.0 / (*vi / bc).sqrt();
            n += 1.0;
            let d = psi - mean;
            mean += d / n;
            m2 += d * (psi - mean);
        }
        let var = m2 / (n - 1.0);
        adam.push(var);
        radam.push(r_t(beta2, t).map(|r| r * r * var).unwrap_or(f64::NAN));
    }
    Curves { adam, radam }
}

fn plot(args: &Args, curves: &[(f64, Curves)]) -> Result<()> {
    let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    let n = curves.len().max(1) as u32;
    let root = BitMapBackend::new(&args.out, (520 * n, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let root = root
        .titled(
            &format!(
                "Variance of the adaptive learning rate, g ~ N(mu, 1), beta2 = {}, {} runs",
                args.beta2, args.runs
            ),
            ("sans-serif", 24),
        )
        .map_err(|e| anyhow!("{e}"))?;
    let panels = root.split_evenly((1, curves.len()));
    let steps = args.steps as f64;
    let rs: Vec<(f64, f64)> =
        (1..=args.steps).filter_map(|t| r_t(args.beta2, t).map(|r| (t as f64, r))).collect();
    for (panel, (mu, c)) in panels.iter().zip(curves) {
        let vals: Vec<f64> =
            c.adam.iter().chain(&c.radam).copied().filter(|x| x.is_finite() && *x > 0.0).collect();
        let lo = vals.iter().cloned().fold(f64::INFINITY, f64::min);
        let hi = vals.iter().cloned().fold(0.0, f64::max);
        let mut chart = ChartBuilder::on(panel)
            .caption(format!("mu = {mu}"), ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .right_y_label_area_size(45)
            .build_cartesian_2d((1f64..steps).log_scale(), ((lo * 0.5)..(hi * 2.0)).log_scale())
            .map_err(|e| anyhow!("{e}"))?
            .set_secondary_coord((1f64..steps).log_scale(), 0f64..1.05);
        chart
            .configure_mesh()
            .x_desc("step t (log)")
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_desc("variance (log)")
            .y_label_formatter(&|y| format!("{y:.0e}"))
            .label_style(("sans-serif", 14))
            .axis_desc_style(("sans-serif", 16))
            .draw()
            .map_err(|e| anyhow!("{e}"))?;
        chart
            .configure_secondary_axes()
            .y_desc("r_t")
            .label_style(("sans-serif", 14))
            .axis_desc_style(("sans-serif", 16))
            .draw()
            .map_err(|e| anyhow!("{e}"))?;
        let series = |v: &[f64]| -> Vec<(f64, f64)> {
            v.iter()
                .enumerate()
                .filter(|(_, x)| x.is_finite() && **x > 0.0)
                .map(|(i, &x)| ((i + 1) as f64, x))
                .collect()
        };
        let red = RGBColor(214, 39, 40);
        let green = RGBColor(44, 160, 44);
        chart
            .draw_series(LineSeries::new(series(&c.adam), red.stroke_width(2)))
            .map_err(|e| anyhow!("{e}"))?
            .label("Adam: Var[psi_t]")
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 22, y)], red.stroke_width(3)));
        chart
            .draw_series(LineSeries::new(series(&c.radam), green.stroke_width(2)))
            .map_err(|e| anyhow!("{e}"))?
            .label("RAdam: Var[r_t psi_t]")
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 22, y)], green.stroke_width(3))
            });
        chart
            .draw_secondary_series(DashedLineSeries::new(
                rs.clone(),
                6,
                4,
                BLACK.mix(0.6).stroke_width(2),
            ))
            .map_err(|e| anyhow!("{e}"))?
            .label("r_t (analytic, right axis)")
            .legend(|(x, y)| {
                PathElement::new(vec![(x, y), (x + 22, y)], BLACK.mix(0.6).stroke_width(2))
            });
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperMiddle)
            .label_font(("sans-serif", 14))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(|e| anyhow!("{e}"))?;
    }
    root.present().map_err(|e| anyhow!("{e}"))?;
    Ok(())
}

fn main() -> Result<()> {
    let args = Args::parse();
    if !(0.0..1.0).contains(&args.beta2) || args.steps == 0 || args.runs < 2 {
        anyhow::bail!("need 0 <= beta2 < 1, steps >= 1, runs >= 2");
    }
    let start = std::time::Instant::now();
    let curves: Vec<(f64, Curves)> = args
        .mus
        .iter()
        .enumerate()
        .map(|(i, &mu)| (mu, simulate(mu, args.beta2, args.steps, args.runs, args.seed + i as u64)))
        .collect();

    print!("|    t |  rho_t |    r_t |");
    for (mu, _) in &curves {
        print!(" Var[psi] mu={mu:<4} | Var[r*psi] mu={mu:<4} |");
    }
    println!();
    print!("|---:|---:|---:|");
    for _ in &curves {
        print!("---:|---:|");
    }
    println!();
    let mut ts: Vec<usize> =
        vec![1, 2, 3, 5, 6, 8, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000];
    ts.retain(|&t| t <= args.steps);
    if !ts.contains(&args.steps) {
        ts.push(args.steps);
    }
    for &t in &ts {
        let r = r_t(args.beta2, t);
        print!(
            "| {t:>4} | {:>6.2} | {:>6} |",
            rho_t(args.beta2, t),
            r.map(|r| format!("{r:.3}")).unwrap_or("-".into())
        );
        for (_, c) in &curves {
            let rv = c.radam[t - 1];
            print!(
                " {:>17.4e} | {:>19} |",
                c.adam[t - 1],
                if rv.is_finite() { format!("{rv:.4e}") } else { "-".into() }
            );
        }
        println!();
    }
    if let Some(dir) = args.out.parent() {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir)?;
        }
    }
    plot(&args, &curves)?;
    eprintln!("wrote {} in {:.1} s", args.out.display(), start.elapsed().as_secs_f64());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rho_and_r_t_analytic() {
        // rho_1 = 1 for any beta2; rho_t -> rho_inf; r_t -> 1; r_t increasing.
        for b2 in [0.98, 0.999] {
            assert!((rho_t(b2, 1) - 1.0).abs() < 1e-6);
            assert!(r_t(b2, 1).is_none());
            assert!((rho_t(b2, 200_000) - rho_inf(b2)).abs() < 1e-6);
            assert!((r_t(b2, 200_000).unwrap() - 1.0).abs() < 1e-9);
            let rs: Vec<f64> = (1..2000).filter_map(|t| r_t(b2, t)).collect();
            assert!(rs.windows(2).all(|w| w[1] >= w[0] - 1e-12));
        }
        assert!((rho_inf(0.999) - 1999.0).abs() < 1e-9);
        // beta2 = 0.98: rho_inf = 99, first step with rho_t > 4 is t = 5.
        assert!(r_t(0.98, 4).is_none() && r_t(0.98, 5).is_some());
    }

    #[test]
    fn rectification_flattens_the_variance_for_zero_mean_gradients() {
        let (b2, steps) = (0.99, 300);
        let c = simulate(0.0, b2, steps, 4000, 1);
        let late = c.adam[steps - 1];
        // Adam's variance early on is far above its late value...
        assert!(c.adam[9] > 3.0 * late, "{} vs {late}", c.adam[9]);
        // ...and decreasing; the rectified one stays near the late value.
        assert!(c.adam[9] > c.adam[49] && c.adam[49] > c.adam[199]);
        for t in [10, 50, 100] {
            let ratio = c.radam[t - 1] / late;
            assert!((0.5..2.0).contains(&ratio), "t {t}: rectified / late = {ratio}");
        }
        // Deterministic.
        assert_eq!(simulate(0.0, b2, 20, 100, 3).adam, simulate(0.0, b2, 20, 100, 3).adam);
    }
}
