//! The upstream's fixed answers.

/// The prediction every answer carries.
pub const PREDICTION: &str = "0.42";

/// Path of the small answer: a short JSON body and an `x-prediction` header
/// (configurations 1-5: the header costs nothing to those that ignore it).
pub const SMALL_PATH: &str = "/small";
/// Path of the 1 KiB JSON answer with `"prediction": 0.42` in it.
pub const JSON_PATH: &str = "/json";

/// The small body.
pub fn small_body() -> Vec<u8> {
    format!("{{\"prediction\":{PREDICTION}}}").into_bytes()
}

/// Exactly 1024 bytes of JSON shaped like a model's answer: the prediction,
/// a list of scores and an id padded to size.
pub fn json_body() -> Vec<u8> {
    const SIZE: usize = 1024;
    let mut s = format!("{{\"model\":\"v1\",\"prediction\":{PREDICTION},\"scores\":[");
    let tail = "],\"id\":\"\"}";
    let mut x: u32 = 12_345;
    let mut first = true;
    loop {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        let score = format!("{}0.{:04}", if first { "" } else { "," }, (x >> 8) % 10_000);
        if s.len() + score.len() + tail.len() + 8 > SIZE {
            break;
        }
        s.push_str(&score);
        first = false;
    }
    s.push_str("],\"id\":\"");
    while s.len() + 2 < SIZE {
        s.push('a');
    }
    s.push_str("\"}");
    s.into_bytes()
}

/// A complete HTTP/1.1 200 response with a body and extra header lines.
pub fn response(body: &[u8], extra_headers: &[(&str, &str)]) -> Vec<u8> {
    let mut head = String::from("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n");
    for (k, v) in extra_headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!("content-length: {}\r\n\r\n", body.len()));
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_body_is_1_kib_of_json_with_the_prediction() {
        let body = json_body();
        assert_eq!(body.len(), 1024);
        let doc: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(doc.pointer("/prediction").and_then(|v| v.as_f64()), Some(0.42));
        assert!(doc["scores"].as_array().unwrap().len() > 50);
    }

    #[test]
    fn small_body_carries_the_prediction() {
        let doc: serde_json::Value = serde_json::from_slice(&small_body()).unwrap();
        assert_eq!(doc["prediction"].as_f64(), Some(0.42));
    }
}
