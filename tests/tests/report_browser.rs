//! `genlab report` pages in a real browser: headless Chromium loads the page of a trained
//! VAE run without a console message, the DOM holds the SVG plots and the sample grids, and
//! a screenshot shows the curves drawn. Chromium is required (`cargo xtask setup` installs
//! Debian's `chromium`); without it these tests fail and say so.
use genlab_core::report::{self, ReportSummary, CURVE_COLOR};
use genlab_core::train::{run, HarnessConfig};
use genlab_data::{Loader, LoaderConfig};
use genlab_vae::train::{VaeRunConfig, VaeTask};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tch::Device;

fn chromium() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for name in ["chromium", "chromium-browser"] {
        for dir in std::env::split_paths(&path) {
            let p = dir.join(name);
            if p.is_file() {
                return p;
            }
        }
    }
    panic!(
        "chromium is not installed, and the report's browser tests need it: `cargo xtask setup` installs it \
         (as root; else `sudo apt-get install chromium`)"
    );
}

/// Run headless Chromium on `page` with `args`; returns (stdout, stderr).
fn browse(page: &Path, work: &Path, args: &[&str]) -> (String, String) {
    let (out, err) = (work.join("stdout"), work.join("stderr"));
    let mut child = Command::new(chromium())
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--enable-logging=stderr", "--v=0"])
        .arg(format!("--user-data-dir={}", work.join("profile").display()))
        .args(args)
        .arg(format!("file://{}", page.canonicalize().unwrap().display()))
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .expect("starting chromium");
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("chromium did not finish within 120 s on {}", page.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let read = |p: &Path| String::from_utf8_lossy(&std::fs::read(p).unwrap_or_default()).into_owned();
    assert!(status.success(), "chromium failed ({status}) on {}:\n{}", page.display(), read(&err));
    (read(&out), read(&err))
}

/// Chromium's log lines for console messages (errors, warnings, logs): `...:CONSOLE:1] "..."`.
fn console_lines(stderr: &str) -> Vec<&str> {
    stderr.lines().filter(|l| l.contains(":CONSOLE")).collect()
}

/// A small VAE trained on the 8x8 digits, with sample grids every 10 steps, and its report.
fn trained_run(tmp: &Path) -> (PathBuf, ReportSummary) {
    let ds = genlab_data::open("digits").unwrap();
    let [c, h, w] = ds.shape();
    let run_cfg = VaeRunConfig::from_preset("mlp", [c as i64, h as i64, w as i64], ds.num_classes(), "digits").unwrap();
    let mut loader = Loader::new(ds, LoaderConfig::new(64, 0, Device::Cpu)).unwrap();
    let mut task = VaeTask::new(run_cfg, Device::Cpu).unwrap();
    let dir = tmp.join("run");
    let cfg = HarnessConfig {
        progress: false,
        sample_every: 10,
        log_every: 2,
        checkpoint_every: 20,
        n_samples: 16,
        ..HarnessConfig::new(&dir, 40)
    };
    run(&mut task, &mut loader, &cfg).unwrap();
    let page = tmp.join("report.html");
    let summary = report::write_report(&dir, &page).unwrap();
    assert!(summary.missing.is_empty(), "{:?}", summary.missing);
    (page, summary)
}

#[test]
fn the_report_loads_in_chromium_with_its_plots_and_grids_and_no_console_messages() {
    let tmp = tempfile::tempdir().unwrap();
    // The check can fail: a page with a script error is caught.
    let control = tmp.path().join("control.html");
    std::fs::write(&control, "<!DOCTYPE html><p>x</p><script>console.error('genlab-control'); nope();</script>")
        .unwrap();
    let (_, err) = browse(&control, tmp.path(), &["--dump-dom"]);
    let caught = console_lines(&err);
    assert!(caught.iter().any(|l| l.contains("genlab-control")), "console errors are not seen in:\n{err}");

    let (page, summary) = trained_run(tmp.path());
    let (dom, err) = browse(&page, tmp.path(), &["--dump-dom"]);
    assert!(console_lines(&err).is_empty(), "console messages:\n{}", console_lines(&err).join("\n"));
    assert!(dom.contains(r#"<b id="status">finished</b>"#), "{dom:.2000}");
    assert_eq!(dom.matches("<svg").count(), summary.plots.len());
    assert!(summary.plots.len() >= 3 && summary.plots[0] == "loss", "{:?}", summary.plots);
    for metric in &summary.plots {
        assert!(dom.contains(&format!(r#"data-metric="{metric}""#)), "{metric}");
    }
    assert_eq!(summary.samples, [Some(10), Some(20), Some(30), Some(40)]);
    assert_eq!(dom.matches(r#"<img class="grid" src="data:image/png;base64,"#).count(), 4);

    // An incomplete run's page loads cleanly too.
    let bare = tmp.path().join("bare");
    std::fs::create_dir(&bare).unwrap();
    std::fs::write(bare.join("config.json"), "{ broken").unwrap();
    let bare_page = tmp.path().join("bare.html");
    let s = report::write_report(&bare, &bare_page).unwrap();
    assert!(s.missing.len() >= 4, "{:?}", s.missing);
    let (dom, err) = browse(&bare_page, tmp.path(), &["--dump-dom"]);
    assert!(console_lines(&err).is_empty(), "{err}");
    assert!(dom.contains("metrics.jsonl is missing") && dom.contains("{ broken"));
}

#[test]
fn a_screenshot_of_the_report_shows_the_curves() {
    let tmp = tempfile::tempdir().unwrap();
    let (page, summary) = trained_run(tmp.path());
    let shot = tmp.path().join("shot.png");
    browse(&page, tmp.path(), &[&format!("--screenshot={}", shot.display()), "--window-size=1200,2000"]);
    let img = tch::vision::image::load(&shot).unwrap();
    let size = img.size();
    assert_eq!((size[1], size[2]), (2000, 1200), "{size:?}");
    let (h, w) = (size[1] as usize, size[2] as usize);
    let chans = size[0] as usize;
    let hwc = img.permute([1, 2, 0]).contiguous();
    let mut px = vec![0u8; h * w * chans];
    hwc.copy_data_u8(&mut px, h * w * chans);
    let at = |x: usize, y: usize| -> [u8; 3] {
        let i = (y * w + x) * chans;
        [px[i], px[i + 1], px[i + 2]]
    };
    let hex = |i: usize| u8::from_str_radix(&CURVE_COLOR[i..i + 2], 16).unwrap() as i32;
    let curve = [hex(1), hex(3), hex(5)];
    let is_curve = |p: [u8; 3]| (0..3).all(|c| (p[c] as i32 - curve[c]).abs() <= 24);
    // Where the curves are drawn: pixels of the curve colour, and their bounding box.
    let mut count = 0usize;
    let (mut x0, mut x1, mut y0, mut y1) = (w, 0, h, 0);
    for y in 0..h {
        for x in 0..w {
            if is_curve(at(x, y)) {
                count += 1;
                (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
            }
        }
    }
    assert!(count > 500 * summary.plots.len().min(4), "only {count} curve pixels");
    // Plots side by side: the curves cover most of the page's width, and start below the header.
    assert!(x1 - x0 > 700, "curves span x {x0}..{x1}");
    assert!(y0 > 60 && y1 > y0 + 200, "curves span y {y0}..{y1}");
    // The plot area around the curves is drawn (axes, ticks, labels), not blank page.
    let background = at(5, 5);
    let mut dark = 0usize;
    for y in y0..=y1 {
        for x in x0.saturating_sub(60)..=x1 {
            let p = at(x, y);
            if p != background && p.iter().all(|&c| c < 120) {
                dark += 1;
            }
        }
    }
    assert!(dark > 1000, "only {dark} dark (axis and text) pixels around the curves");
}
