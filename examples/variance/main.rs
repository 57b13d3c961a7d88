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
//! cargo run --release --example variance                  # table; out/variance/{variance.png,variance.csv}
//! cargo run --release --example variance -- --mus 0,1,10 --steps 10000 --runs 4000 --beta2 0.999 --out docs
//! ```

use anyhow::{anyhow, bail, Context, Result};
use clap::Parser;
use plotters::prelude::*;
use plotters::style::FontStyle;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::io::Write;
use std::path::{Path, PathBuf};

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
    /// Output directory (created if needed): variance.png (the plot) and variance.csv (one row
    /// per step: t, rho_t, r_t, and per mu Var[psi_t] and Var[r_t psi_t]).
    #[arg(long, default_value = "out/variance")]
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

/// Creates `--out` and `variance.csv` in it, before the simulation: an unusable path fails here.
fn open_outputs(out: &Path) -> Result<(PathBuf, std::fs::File)> {
    if out.exists() && !out.is_dir() {
        bail!(
            "--out {}: expected an output directory (for variance.png and variance.csv), found a file",
            out.display()
        );
    }
    std::fs::create_dir_all(out)
        .with_context(|| format!("--out {}: cannot create the output directory", out.display()))?;
    let csv = out.join("variance.csv");
    let f = std::fs::File::create(&csv)
        .with_context(|| format!("--out {}: cannot write {}", out.display(), csv.display()))?;
    Ok((out.join("variance.png"), f))
}

/// One row per step: `t,rho_t,r_t,var_psi_mu<mu>,var_rpsi_mu<mu>,...` (`r_t` and the rectified
/// variance empty where `rho_t <= 4`).
fn write_csv(mut f: impl Write, beta2: f64, curves: &[(f64, Curves)]) -> Result<()> {
    write!(f, "t,rho_t,r_t")?;
    for (mu, _) in curves {
        write!(f, ",var_psi_mu{mu},var_rpsi_mu{mu}")?;
    }
    writeln!(f)?;
    let steps = curves.first().map(|c| c.1.adam.len()).unwrap_or(0);
    for t in 1..=steps {
        let r = r_t(beta2, t).map(|r| format!("{r:.6}")).unwrap_or_default();
        write!(f, "{t},{:.6},{r}", rho_t(beta2, t))?;
        for (_, c) in curves {
            let rv = c.radam[t - 1];
            let rv = if rv.is_finite() { format!("{rv:.6e}") } else { String::new() };
            write!(f, ",{:.6e},{rv}", c.adam[t - 1])?;
        }
        writeln!(f)?;
    }
    f.flush()?;
    Ok(())
}

fn plot(png: &Path, args: &Args, curves: &[(f64, Curves)]) -> Result<()> {
    let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    let n = curves.len().max(1) as u32;
    let root = BitMapBackend::new(png, (520 * n, 500)).into_drawing_area();
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
    let (png, csv) = open_outputs(&args.out)?;
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
    write_csv(std::io::BufWriter::new(csv), args.beta2, &curves)?;
    plot(&png, &args, &curves)?;
    eprintln!(
        "wrote {}/{{variance.png,variance.csv}} in {:.1} s",
        args.out.display(),
        start.elapsed().as_secs_f64()
    );
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

    /// `--out` is a directory; a file or an uncreatable path is an error before the simulation,
    /// naming what was expected; the CSV has one row per step.
    #[test]
    fn out_is_a_directory_checked_up_front() -> Result<()> {
        let tmp = tempfile::tempdir()?;
        let file = tmp.path().join("fig.png");
        std::fs::write(&file, "x")?;
        let e = format!("{:#}", open_outputs(&file).unwrap_err());
        assert!(e.contains("expected an output directory"), "{e}");
        let e = format!("{:#}", open_outputs(&file.join("sub")).unwrap_err());
        assert!(e.contains("cannot create the output directory"), "{e}");

        let dir = tmp.path().join("a/b");
        let (png, csv) = open_outputs(&dir)?;
        assert_eq!(png, dir.join("variance.png"));
        let curves =
            vec![(0.0, simulate(0.0, 0.98, 6, 50, 1)), (10.0, simulate(10.0, 0.98, 6, 50, 2))];
        write_csv(csv, 0.98, &curves)?;
        let args =
            Args::try_parse_from(["variance", "--steps", "6", "--runs", "50", "--beta2", "0.98"])?;
        plot(&png, &args, &curves)?;
        let text = std::fs::read_to_string(dir.join("variance.csv"))?;
        let rows: Vec<&str> = text.lines().collect();
        assert_eq!(rows[0], "t,rho_t,r_t,var_psi_mu0,var_rpsi_mu0,var_psi_mu10,var_rpsi_mu10");
        assert_eq!(rows.len(), 7);
        assert!(rows[4].starts_with("4,") && rows[4].split(',').nth(2) == Some(""), "{}", rows[4]);
        assert!(rows[5].starts_with("5,") && rows[5].split(',').nth(2) != Some(""), "{}", rows[5]);
        assert!(std::fs::metadata(&png)?.len() > 1000);
        Ok(())
    }
}
