#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| portcullis_gateway::fuzz::sftp_packets(data));
