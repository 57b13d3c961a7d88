//! Reading parallel text files: plain or gzip-compressed (by the `.gz` extension), UTF-8, one
//! sentence per line. Errors name the file, and the line for invalid UTF-8.

use anyhow::{bail, Context, Result};
use std::io::Read;
use std::path::{Path, PathBuf};

/// The lines of a UTF-8 text file, `.gz` decompressed (all members of a multi-member file), with
/// `\n` or `\r\n` line ends removed. A final line without `\n` counts; a file that ends with `\n`
/// has no empty last line.
///
/// Errors: unreadable file, corrupt gzip stream, invalid UTF-8 (`path:line: invalid UTF-8 ...`,
/// lines counted from 1), a file without any line.
pub fn read_lines(path: &Path) -> Result<Vec<String>> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut bytes = Vec::new();
    if path.extension().is_some_and(|e| e == "gz") {
        flate2::read::MultiGzDecoder::new(file).read_to_end(&mut bytes).with_context(|| {
            format!("cannot decompress {} (not a valid gzip file?)", path.display())
        })?;
    } else {
        std::io::BufReader::new(file)
            .read_to_end(&mut bytes)
            .with_context(|| format!("cannot read {}", path.display()))?;
    }
    // A UTF-8 byte order mark at the start (as some Windows editors write) is not text.
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&bytes);
    let body = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    if bytes.is_empty() {
        bail!("{} is empty", path.display());
    }
    body.split(|&b| b == b'\n')
        .enumerate()
        .map(|(i, line)| {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            std::str::from_utf8(line).map(str::to_string).map_err(|e| {
                anyhow::anyhow!(
                    "{}:{}: invalid UTF-8 at byte {} of the line (the text must be UTF-8)",
                    path.display(),
                    i + 1,
                    e.valid_up_to() + 1
                )
            })
        })
        .collect()
}

/// Both sides of a parallel corpus, line `i` of `src` translating line `i` of `tgt`.
///
/// Errors: those of [`read_lines`], and sides with different line counts.
pub fn read_parallel_lines(src: &Path, tgt: &Path) -> Result<Vec<(String, String)>> {
    let s = read_lines(src)?;
    let t = read_lines(tgt)?;
    if s.len() != t.len() {
        bail!(
            "{} has {} lines but {} has {}: the sides of a parallel corpus must be aligned line by line",
            src.display(),
            s.len(),
            tgt.display(),
            t.len()
        );
    }
    Ok(s.into_iter().zip(t).collect())
}

/// The files of a parallel data set: train, valid and an optional test set, `(src, tgt)` each.
#[derive(Debug, Clone)]
pub struct ParallelFiles {
    pub train: (PathBuf, PathBuf),
    pub valid: (PathBuf, PathBuf),
    pub test: Option<(PathBuf, PathBuf)>,
}

/// The Multi30K task-1 layout (`multi30k/dataset`, `data/task1/raw`): `train.L`, `val.L` and
/// `test_2016_flickr.L` for the languages `L`, each plain or `.gz`.
///
/// Errors: a missing file, naming the names it looked for.
pub fn multi30k_files(dir: &Path, src_lang: &str, tgt_lang: &str) -> Result<ParallelFiles> {
    let find = |stem: &str, lang: &str| -> Result<PathBuf> {
        let plain = dir.join(format!("{stem}.{lang}"));
        let gz = dir.join(format!("{stem}.{lang}.gz"));
        match (plain.is_file(), gz.is_file()) {
            (true, _) => Ok(plain),
            (false, true) => Ok(gz),
            _ => bail!(
                "--multi30k {}: found neither {} nor {} (expected Multi30K's train, val and \
                 test_2016_flickr files, as in data/task1/raw of github.com/multi30k/dataset)",
                dir.display(),
                plain.display(),
                gz.display()
            ),
        }
    };
    let pair = |stem: &str| -> Result<(PathBuf, PathBuf)> {
        Ok((find(stem, src_lang)?, find(stem, tgt_lang)?))
    };
    Ok(ParallelFiles {
        train: pair("train")?,
        valid: pair("val")?,
        test: Some(pair("test_2016_flickr")?),
    })
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use std::io::Write;

    /// The shared Multi30K data: `$SHARED_DATA/multi30k` if set, else `../shared/data/multi30k`
    /// from the repository root (where CI has it). `None`, with a note on stderr, when it is
    /// not there: the tests that read it then check nothing.
    pub fn multi30k_dir() -> Option<PathBuf> {
        let base = std::env::var_os("SHARED_DATA")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data"));
        let d = base.join("multi30k");
        if d.join("train.de.gz").is_file() {
            Some(d)
        } else {
            eprintln!("note: no Multi30K data at {}: this test is skipped", d.display());
            None
        }
    }

    pub fn gz(path: &Path, text: &[u8]) {
        let mut e = flate2::write::GzEncoder::new(
            std::fs::File::create(path).unwrap(),
            flate2::Compression::default(),
        );
        e.write_all(text).unwrap();
        e.finish().unwrap();
    }

    #[test]
    fn plain_and_gzip_read_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let text = "Ein Hund läuft.\r\nZwei Männer\n\nletzte Zeile ohne Umbruch";
        std::fs::write(dir.path().join("a.de"), text).unwrap();
        gz(&dir.path().join("a.de.gz"), text.as_bytes());
        let a = read_lines(&dir.path().join("a.de")).unwrap();
        assert_eq!(a, ["Ein Hund läuft.", "Zwei Männer", "", "letzte Zeile ohne Umbruch"]);
        assert_eq!(read_lines(&dir.path().join("a.de.gz")).unwrap(), a);
        // A trailing newline does not add a line.
        std::fs::write(dir.path().join("b"), "x\ny\n").unwrap();
        assert_eq!(read_lines(&dir.path().join("b")).unwrap(), ["x", "y"]);
        // A UTF-8 byte order mark is dropped (only at the start); a file of only a BOM is empty.
        std::fs::write(dir.path().join("bom"), "\u{feff}Ein Hund.\n\u{feff}x\n").unwrap();
        assert_eq!(read_lines(&dir.path().join("bom")).unwrap(), ["Ein Hund.", "\u{feff}x"]);
        gz(&dir.path().join("bom.gz"), "\u{feff}a\n".as_bytes());
        assert_eq!(read_lines(&dir.path().join("bom.gz")).unwrap(), ["a"]);
        std::fs::write(dir.path().join("only"), "\u{feff}").unwrap();
        assert!(read_lines(&dir.path().join("only")).unwrap_err().to_string().contains("empty"));
    }

    #[test]
    fn reader_errors_name_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n);
        // Invalid UTF-8 (a lone Latin-1 byte) on line 3, byte 5, plain and compressed.
        let bad = b"ok\nauch ok\nM\xe4nner\n";
        std::fs::write(p("bad.en"), bad).unwrap();
        gz(&p("bad.en.gz"), bad);
        for f in ["bad.en", "bad.en.gz"] {
            let e = format!("{:#}", read_lines(&p(f)).unwrap_err());
            assert!(e.contains(&format!("{f}:3: invalid UTF-8 at byte 2")), "{e}");
        }
        std::fs::write(p("empty"), "").unwrap();
        let e = read_lines(&p("empty")).unwrap_err().to_string();
        assert!(e.contains("empty"), "{e}");
        gz(&p("empty.gz"), b"");
        assert!(read_lines(&p("empty.gz")).unwrap_err().to_string().contains("empty"));
        std::fs::write(p("fake.gz"), "not gzip").unwrap();
        let e = format!("{:#}", read_lines(&p("fake.gz")).unwrap_err());
        assert!(e.contains("fake.gz") && e.contains("gzip"), "{e}");
        let e = format!("{:#}", read_lines(&p("missing")).unwrap_err());
        assert!(e.contains("cannot read") && e.contains("missing"), "{e}");
        std::fs::write(p("two"), "a\nb\n").unwrap();
        std::fs::write(p("one"), "a\n").unwrap();
        let e = read_parallel_lines(&p("two"), &p("one")).unwrap_err().to_string();
        assert!(e.contains("2 lines") && e.contains("has 1"), "{e}");
    }

    #[test]
    fn multi30k_layout_prefers_plain_and_names_what_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        for f in ["train.de", "train.en.gz", "val.de.gz", "val.en.gz", "test_2016_flickr.de"] {
            std::fs::write(dir.path().join(f), "x\n").unwrap();
        }
        let e = multi30k_files(dir.path(), "de", "en").unwrap_err().to_string();
        assert!(e.contains("test_2016_flickr.en.gz"), "{e}");
        std::fs::write(dir.path().join("test_2016_flickr.en"), "x\n").unwrap();
        let f = multi30k_files(dir.path(), "de", "en").unwrap();
        assert_eq!(f.train, (dir.path().join("train.de"), dir.path().join("train.en.gz")));
        assert_eq!(f.test.unwrap().1, dir.path().join("test_2016_flickr.en"));
    }
}
