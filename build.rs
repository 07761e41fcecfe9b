//! Marks libkeytrail.so NODELETE: applications (and the cryptoki crate) dlclose their
//! PKCS#11 module after C_Finalize, but keytrail's writer thread and exit handler live
//! for the whole process; unmapping their code under them would crash the host.

fn main() {
    println!("cargo:rustc-cdylib-link-arg=-Wl,-z,nodelete");
}
