#![no_std]
// This file exists so that dataplane-user can build-depend on this crate:
// cargo then rebuilds the user binary whenever the eBPF sources change.
