#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| portcullis_ftp_proto::fuzz_control(data));
