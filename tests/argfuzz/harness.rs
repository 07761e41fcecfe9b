//! The starting state (a SoftHSM2 token with keys, keytrail initialised over it) and the
//! comparison of one case run directly and through keytrail, each in a forked child.

use super::Source;
use super::arena::Arena;
use super::call::{AES_VALUE, Case, Env, HMAC_VALUE, P256};
use cryptoki_sys::*;
use libloading::os::unix::{Library, RTLD_LOCAL, RTLD_NOW};
use std::ffi::c_void;
use std::path::{Path, PathBuf};
use std::ptr::null_mut;
use std::time::{Duration, Instant};

const USER_PIN: &[u8] = b"fuzz-user-1234";
const SO_PIN: &[u8] = b"fuzz-so-5678";

/// How long a child may take before it is killed (and reported as hanging).
const CHILD_DEADLINE: Duration = Duration::from_secs(60);

/// What one child did.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// `exit N`, `signal N` or `killed after …`.
    pub status: String,
    /// What it reported: the call it made, what came back, its C_Finalize.
    pub report: String,
    /// Its process id.
    pub pid: libc::pid_t,
}

impl PartialEq for Outcome {
    /// The same behaviour (the process ids differ, of course).
    fn eq(&self, other: &Outcome) -> bool {
        self.status == other.status && self.report == other.report
    }
}

/// A case whose two runs differ.
#[derive(Debug, Clone)]
pub struct Difference {
    pub direct: Outcome,
    pub keytrail: Outcome,
}

/// The parent: both modules loaded, keytrail initialised over SoftHSM, the starting state
/// made, and the memory the children build their arguments in.
pub struct Harness {
    pub dir: PathBuf,
    pub direct: &'static CK_FUNCTION_LIST,
    pub keytrail: &'static CK_FUNCTION_LIST,
    pub env: Env,
    arena: Arena,
}

impl Harness {
    /// Makes a token store in `dir`, configures keytrail (`audit` is the body of its
    /// `[audit]` table), initialises keytrail over SoftHSM, and makes the starting state
    /// directly on SoftHSM (so that the children's keytrail looks keys up itself).
    ///
    /// Sets `SOFTHSM2_CONF` and `KEYTRAIL_CONFIG` for this process: call it before any
    /// other thread reads the environment.
    pub fn new(dir: &Path, softhsm: &Path, keytrail: &Path, audit: &str) -> Harness {
        let softhsm_conf = init_store(dir);
        let conf = dir.join("keytrail.toml");
        std::fs::write(
            &conf,
            format!(
                "module = \"{}\"\ndiagnostics = \"{}\"\n[audit]\n{audit}\n[trail]\npath = \"{}\"\n",
                softhsm.display(),
                dir.join("diagnostics.log").display(),
                dir.join("trail").join("keytrail-{pid}.jsonl").display(),
            ),
        )
        .expect("write keytrail.toml");
        // SAFETY (test): the caller guarantees no other thread reads the environment.
        unsafe {
            std::env::set_var("SOFTHSM2_CONF", &softhsm_conf);
            std::env::set_var("KEYTRAIL_CONFIG", &conf);
            std::env::remove_var("KEYTRAIL_MODULE");
        }
        let direct = list(softhsm);
        let through = list(keytrail);
        let mut args = CK_C_INITIALIZE_ARGS {
            CreateMutex: None,
            DestroyMutex: None,
            LockMutex: None,
            UnlockMutex: None,
            flags: CKF_OS_LOCKING_OK,
            pReserved: null_mut(),
        };
        // SAFETY (test): valid arguments.
        let rv = unsafe { (through.C_Initialize.expect("fn"))(&mut args as *mut _ as *mut c_void) };
        assert_eq!(rv, CKR_OK, "C_Initialize through keytrail");
        let env = setup(direct);
        Harness {
            dir: dir.to_path_buf(),
            direct,
            keytrail: through,
            env,
            arena: Arena::map(),
        }
    }

    /// The trail files: each process (the parent, every keytrail child) writes its own,
    /// `keytrail-PID.jsonl`.
    pub fn trails(&self) -> Vec<(libc::pid_t, PathBuf)> {
        let mut files: Vec<(libc::pid_t, PathBuf)> = std::fs::read_dir(self.dir.join("trail"))
            .map(|d| d.flatten().map(|e| e.path()).collect::<Vec<_>>())
            .unwrap_or_default()
            .into_iter()
            .filter_map(|p| {
                let name = p.file_name()?.to_str()?;
                let pid = name.strip_prefix("keytrail-")?.strip_suffix(".jsonl")?;
                Some((pid.parse().ok()?, p))
            })
            .collect();
        files.sort();
        files
    }

    /// The trail file of one process.
    pub fn trail_of(&self, pid: libc::pid_t) -> PathBuf {
        self.dir.join("trail").join(format!("keytrail-{pid}.jsonl"))
    }

    /// keytrail's diagnostics file.
    pub fn diagnostics(&self) -> PathBuf {
        self.dir.join("diagnostics.log")
    }

    /// Runs one case (its choices from a fresh `make()`) directly and through keytrail,
    /// each in a child forked from this starting state, and compares what they did.
    /// Returns keytrail's outcome when they match.
    pub fn compare(&mut self, make: &dyn Fn() -> Box<dyn Source>) -> Result<Outcome, Difference> {
        let a = self.spawn(self.direct, make);
        let b = self.spawn(self.keytrail, make);
        let direct = a.finish();
        let keytrail = b.finish();
        if direct == keytrail {
            Ok(keytrail)
        } else {
            Err(Difference { direct, keytrail })
        }
    }

    /// Finalizes keytrail in this process (its own records drained).
    pub fn finalize(&self) -> CK_RV {
        // SAFETY (test): NULL reserved.
        unsafe { (self.keytrail.C_Finalize.expect("fn"))(null_mut()) }
    }

    fn spawn(&mut self, l: &'static CK_FUNCTION_LIST, make: &dyn Fn() -> Box<dyn Source>) -> Child {
        let mut fds = [0; 2];
        // SAFETY (test): a valid array for the two descriptors.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0, "pipe");
        // SAFETY (test): the child only runs the case, writes to its pipe and _exits.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork");
        if pid == 0 {
            // SAFETY (test): the read end belongs to the parent; a fault must kill the child
            // as it would any process (a fuzzer's own handlers would report it instead).
            unsafe {
                libc::close(fds[0]);
                for sig in [
                    libc::SIGSEGV,
                    libc::SIGBUS,
                    libc::SIGABRT,
                    libc::SIGILL,
                    libc::SIGFPE,
                ] {
                    libc::signal(sig, libc::SIG_DFL);
                }
            }
            let out = fds[1];
            let mut source = make();
            let mut case = Case::new(&mut *source, &mut self.arena, &self.env);
            case.run(l, &mut |desc| write_all(out, &format!("call {desc}\n")));
            write_all(out, &format!("out {}\n", case.out));
            // SAFETY (test): NULL reserved; keytrail drains its trail here.
            let rv = unsafe { (l.C_Finalize.expect("fn"))(null_mut()) };
            write_all(out, &format!("finalize {rv:#x}\n"));
            // SAFETY (test): leaves without running the parent's exit handlers.
            unsafe { libc::_exit(0) };
        }
        // SAFETY (test): the write end belongs to the child.
        unsafe { libc::close(fds[1]) };
        Child { pid, fd: fds[0] }
    }
}

struct Child {
    pid: libc::pid_t,
    fd: libc::c_int,
}

impl Child {
    /// Reads the child's report to its end and reaps it (killing it past the deadline).
    fn finish(self) -> Outcome {
        let started = Instant::now();
        let mut report = Vec::new();
        let mut killed = false;
        loop {
            let mut pfd = libc::pollfd {
                fd: self.fd,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY (test): one valid pollfd.
            let ready = unsafe { libc::poll(&mut pfd, 1, 1000) };
            if ready > 0 {
                let mut buf = [0u8; 4096];
                // SAFETY (test): a valid buffer.
                let n = unsafe { libc::read(self.fd, buf.as_mut_ptr() as *mut c_void, buf.len()) };
                if n <= 0 {
                    break;
                }
                report.extend_from_slice(&buf[..n as usize]);
            } else if !killed && started.elapsed() > CHILD_DEADLINE {
                // SAFETY (test): our own child.
                unsafe { libc::kill(self.pid, libc::SIGKILL) };
                killed = true;
            }
        }
        // SAFETY (test): our descriptor.
        unsafe { libc::close(self.fd) };
        let mut status = 0;
        // SAFETY (test): our own child.
        unsafe { libc::waitpid(self.pid, &mut status, 0) };
        let status = if killed {
            format!("killed after {CHILD_DEADLINE:?}")
        } else if libc::WIFEXITED(status) {
            format!("exit {}", libc::WEXITSTATUS(status))
        } else if libc::WIFSIGNALED(status) {
            format!("signal {}", libc::WTERMSIG(status))
        } else {
            format!("status {status:#x}")
        };
        Outcome {
            status,
            report: String::from_utf8_lossy(&report).into_owned(),
            pid: self.pid,
        }
    }
}

fn write_all(fd: libc::c_int, text: &str) {
    let mut rest = text.as_bytes();
    while !rest.is_empty() {
        // SAFETY (test): a valid buffer.
        let n = unsafe { libc::write(fd, rest.as_ptr() as *const c_void, rest.len()) };
        if n <= 0 {
            return;
        }
        rest = &rest[n as usize..];
    }
}

/// dlopens a module (kept for the process) and returns its 2.40 function list.
fn list(path: &Path) -> &'static CK_FUNCTION_LIST {
    // SAFETY (test): loading a PKCS#11 module runs its initialisers, as any user would.
    let lib = unsafe { Library::open(Some(path), RTLD_NOW | RTLD_LOCAL) }
        .unwrap_or_else(|e| panic!("dlopen {}: {e}", path.display()));
    let lib: &'static Library = Box::leak(Box::new(lib));
    // SAFETY (test): the PKCS#11 signature of C_GetFunctionList.
    let get = unsafe { lib.get::<CK_C_GetFunctionList>(b"C_GetFunctionList\0") }
        .expect("C_GetFunctionList")
        .expect("fn");
    let mut p: CK_FUNCTION_LIST_PTR = null_mut();
    // SAFETY (test): a valid out-pointer.
    assert_eq!(unsafe { get(&mut p) }, CKR_OK);
    // SAFETY (test): the table lives as long as the (never unloaded) module.
    unsafe { &*p }
}

/// A SoftHSM2 token store with one initialised token; returns its configuration file.
fn init_store(dir: &Path) -> PathBuf {
    let tokens = dir.join("tokens");
    std::fs::create_dir_all(&tokens).expect("token dir");
    let conf = dir.join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
            tokens.display()
        ),
    )
    .expect("write softhsm2.conf");
    let out = std::process::Command::new("softhsm2-util")
        .env("SOFTHSM2_CONF", &conf)
        .args(["--init-token", "--free", "--label", "fuzz"])
        .arg("--pin")
        .arg(std::str::from_utf8(USER_PIN).expect("utf8"))
        .arg("--so-pin")
        .arg(std::str::from_utf8(SO_PIN).expect("utf8"))
        .output()
        .expect("softhsm2-util (install softhsm2)");
    assert!(
        out.status.success(),
        "softhsm2-util: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    conf
}

/// An attribute list with owned values.
struct Template {
    values: Vec<Vec<u8>>,
    attrs: Vec<CK_ATTRIBUTE>,
}

impl Template {
    fn new(entries: &[(CK_ATTRIBUTE_TYPE, Vec<u8>)]) -> Template {
        let mut values: Vec<Vec<u8>> = entries.iter().map(|(_, v)| v.clone()).collect();
        let attrs = entries
            .iter()
            .zip(values.iter_mut())
            .map(|((t, _), v)| CK_ATTRIBUTE {
                type_: *t,
                pValue: v.as_mut_ptr() as *mut c_void,
                ulValueLen: v.len() as CK_ULONG,
            })
            .collect();
        Template { values, attrs }
    }

    fn ptr(&mut self) -> CK_ATTRIBUTE_PTR {
        self.attrs.as_mut_ptr()
    }

    fn len(&self) -> CK_ULONG {
        self.attrs.len() as CK_ULONG
    }
}

fn yes(t: CK_ATTRIBUTE_TYPE) -> (CK_ATTRIBUTE_TYPE, Vec<u8>) {
    (t, vec![1])
}

fn no(t: CK_ATTRIBUTE_TYPE) -> (CK_ATTRIBUTE_TYPE, Vec<u8>) {
    (t, vec![0])
}

fn ulong(t: CK_ATTRIBUTE_TYPE, v: CK_ULONG) -> (CK_ATTRIBUTE_TYPE, Vec<u8>) {
    (t, v.to_ne_bytes().to_vec())
}

fn bytes(t: CK_ATTRIBUTE_TYPE, v: &[u8]) -> (CK_ATTRIBUTE_TYPE, Vec<u8>) {
    (t, v.to_vec())
}

fn mech(m: CK_MECHANISM_TYPE) -> CK_MECHANISM {
    CK_MECHANISM {
        mechanism: m,
        pParameter: null_mut(),
        ulParameterLen: 0,
    }
}

/// The starting state, made directly on SoftHSM: two sessions (logged in) and a key of
/// every kind the cases use, all session objects.
fn setup(l: &CK_FUNCTION_LIST) -> Env {
    let mut env = Env::default();
    // SAFETY (test): valid arguments throughout.
    unsafe {
        let mut n: CK_ULONG = 0;
        let slots = l.C_GetSlotList.expect("fn");
        assert_eq!(slots(CK_TRUE, null_mut(), &mut n), CKR_OK);
        let mut ids = vec![0; n as usize];
        assert_eq!(slots(CK_TRUE, ids.as_mut_ptr(), &mut n), CKR_OK);
        let slot = ids[0];
        let open = l.C_OpenSession.expect("fn");
        let flags = CKF_SERIAL_SESSION | CKF_RW_SESSION;
        assert_eq!(open(slot, flags, null_mut(), None, &mut env.rw), CKR_OK);
        assert_eq!(
            open(slot, CKF_SERIAL_SESSION, null_mut(), None, &mut env.ro),
            CKR_OK
        );
        let mut pin = USER_PIN.to_vec();
        assert_eq!(
            (l.C_Login.expect("fn"))(env.rw, CKU_USER, pin.as_mut_ptr(), pin.len() as CK_ULONG),
            CKR_OK
        );
        let s = env.rw;
        let create = |entries: &[(CK_ATTRIBUTE_TYPE, Vec<u8>)]| {
            let mut t = Template::new(entries);
            let mut h = 0;
            assert_eq!(
                (l.C_CreateObject.expect("fn"))(s, t.ptr(), t.len(), &mut h),
                CKR_OK,
                "C_CreateObject"
            );
            h
        };
        env.aes = create(&[
            ulong(CKA_CLASS, CKO_SECRET_KEY),
            ulong(CKA_KEY_TYPE, CKK_AES),
            no(CKA_TOKEN),
            bytes(CKA_VALUE, AES_VALUE),
            bytes(CKA_LABEL, b"fz-aes"),
            bytes(CKA_ID, &[0xa1]),
            yes(CKA_ENCRYPT),
            yes(CKA_DECRYPT),
            yes(CKA_WRAP),
            yes(CKA_UNWRAP),
            yes(CKA_SIGN),
            yes(CKA_VERIFY),
            yes(CKA_DERIVE),
            no(CKA_SENSITIVE),
            yes(CKA_EXTRACTABLE),
        ]);
        env.hmac = create(&[
            ulong(CKA_CLASS, CKO_SECRET_KEY),
            ulong(CKA_KEY_TYPE, CKK_GENERIC_SECRET),
            no(CKA_TOKEN),
            bytes(CKA_VALUE, HMAC_VALUE),
            bytes(CKA_LABEL, b"fz-hmac"),
            yes(CKA_SIGN),
            yes(CKA_VERIFY),
            yes(CKA_DERIVE),
            no(CKA_SENSITIVE),
            yes(CKA_EXTRACTABLE),
        ]);
        env.data = create(&[
            ulong(CKA_CLASS, CKO_DATA),
            no(CKA_TOKEN),
            bytes(CKA_LABEL, b"fz-data"),
            bytes(CKA_APPLICATION, b"fz"),
            bytes(CKA_VALUE, b"public data object"),
        ]);
        env.cert = create(&[
            ulong(CKA_CLASS, CKO_CERTIFICATE),
            ulong(CKA_CERTIFICATE_TYPE, CKC_X_509),
            no(CKA_TOKEN),
            bytes(CKA_LABEL, b"fz-cert"),
            bytes(CKA_SUBJECT, b"0\x0b1\x090\x07\x06\x03U\x04\x03\x0c\x00"),
            bytes(CKA_VALUE, b"not really a certificate"),
        ]);
        let generate = |m: CK_MECHANISM_TYPE, entries: &[(CK_ATTRIBUTE_TYPE, Vec<u8>)]| {
            let mut t = Template::new(entries);
            let mut m = mech(m);
            let mut h = 0;
            assert_eq!(
                (l.C_GenerateKey.expect("fn"))(s, &mut m, t.ptr(), t.len(), &mut h),
                CKR_OK,
                "C_GenerateKey"
            );
            h
        };
        env.kek = generate(
            CKM_AES_KEY_GEN,
            &[
                no(CKA_TOKEN),
                ulong(CKA_VALUE_LEN, 32),
                bytes(CKA_LABEL, b"fz-kek"),
                yes(CKA_WRAP),
                yes(CKA_UNWRAP),
                yes(CKA_ENCRYPT),
                yes(CKA_DECRYPT),
                yes(CKA_SENSITIVE),
                no(CKA_EXTRACTABLE),
            ],
        );
        env.des3 = generate(
            CKM_DES3_KEY_GEN,
            &[no(CKA_TOKEN), yes(CKA_ENCRYPT), yes(CKA_DECRYPT)],
        );
        let pair = |m: CK_MECHANISM_TYPE,
                    public: &[(CK_ATTRIBUTE_TYPE, Vec<u8>)],
                    private: &[(CK_ATTRIBUTE_TYPE, Vec<u8>)]| {
            let (mut p, mut q) = (Template::new(public), Template::new(private));
            let mut m = mech(m);
            let (mut hp, mut hq) = (0, 0);
            assert_eq!(
                (l.C_GenerateKeyPair.expect("fn"))(
                    s,
                    &mut m,
                    p.ptr(),
                    p.len(),
                    q.ptr(),
                    q.len(),
                    &mut hp,
                    &mut hq
                ),
                CKR_OK,
                "C_GenerateKeyPair"
            );
            (hp, hq)
        };
        (env.ec_public, env.ec_private) = pair(
            CKM_EC_KEY_PAIR_GEN,
            &[
                no(CKA_TOKEN),
                bytes(CKA_EC_PARAMS, &P256),
                yes(CKA_VERIFY),
                bytes(CKA_LABEL, b"fz-ec-pub"),
            ],
            &[
                no(CKA_TOKEN),
                yes(CKA_SIGN),
                yes(CKA_DERIVE),
                yes(CKA_SENSITIVE),
                bytes(CKA_LABEL, b"fz-ec-priv"),
            ],
        );
        (env.rsa_public, env.rsa_private) = pair(
            CKM_RSA_PKCS_KEY_PAIR_GEN,
            &[
                no(CKA_TOKEN),
                ulong(CKA_MODULUS_BITS, 1024),
                bytes(CKA_PUBLIC_EXPONENT, &[1, 0, 1]),
                yes(CKA_ENCRYPT),
                yes(CKA_VERIFY),
                yes(CKA_WRAP),
                yes(CKA_VERIFY_RECOVER),
            ],
            &[
                no(CKA_TOKEN),
                yes(CKA_DECRYPT),
                yes(CKA_SIGN),
                yes(CKA_UNWRAP),
                yes(CKA_SIGN_RECOVER),
                yes(CKA_SENSITIVE),
            ],
        );
        let mut m = mech(CKM_AES_KEY_WRAP);
        let mut wrapped = vec![0u8; 64];
        let mut len = wrapped.len() as CK_ULONG;
        assert_eq!(
            (l.C_WrapKey.expect("fn"))(s, &mut m, env.kek, env.aes, wrapped.as_mut_ptr(), &mut len),
            CKR_OK,
            "C_WrapKey"
        );
        wrapped.truncate(len as usize);
        env.wrapped = wrapped;
    }
    env
}
