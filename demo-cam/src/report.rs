//! `--json`: one JSON object per frame, one line each:
//! `{"frame": i, "source": "...", "faces": [{"box": [x, y, w, h], "score": s,
//! "landmarks": [[x, y], ...], "expression": "happy", "probs": {"neutral": p, ...}}]}`.
//! A frame that could not be read carries `"error": "..."` and no faces.
//! The record borrows everything and is written into a reused buffer, so a frame costs no
//! allocation once the buffer has grown.

use std::io::Write;

use serde::ser::{SerializeMap, SerializeSeq, Serializer};
use serde::Serialize;

use crate::faces::FaceResult;

#[derive(Serialize)]
struct FrameRecord<'a> {
    frame: u64,
    source: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
    faces: FaceList<'a>,
}

struct FaceList<'a> {
    faces: &'a [FaceResult],
    class_names: &'a [&'a str],
}

struct FaceRecord<'a> {
    face: &'a FaceResult,
    class_names: &'a [&'a str],
}

struct Probs<'a>(&'a FaceResult, &'a [&'a str]);

struct Landmarks<'a>(&'a Option<[[f32; 2]; 5]>);

impl Serialize for FaceList<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.faces.len()))?;
        for face in self.faces {
            seq.serialize_element(&FaceRecord {
                face,
                class_names: self.class_names,
            })?;
        }
        seq.end()
    }
}

impl Serialize for FaceRecord<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let face = self.face;
        let (class, _) = face.top_class(self.class_names.len());
        let mut map = serializer.serialize_map(Some(5))?;
        map.serialize_entry("box", &face.bbox)?;
        map.serialize_entry("score", &face.score)?;
        map.serialize_entry("landmarks", &Landmarks(&face.landmarks))?;
        map.serialize_entry(
            "expression",
            self.class_names.get(class).copied().unwrap_or("?"),
        )?;
        map.serialize_entry("probs", &Probs(face, self.class_names))?;
        map.end()
    }
}

impl Serialize for Probs<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.1.len()))?;
        for (name, p) in self.1.iter().zip(&self.0.probs) {
            map.serialize_entry(name, p)?;
        }
        map.end()
    }
}

impl Serialize for Landmarks<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let points: &[[f32; 2]] = match self.0 {
            Some(points) => points,
            None => &[],
        };
        points.serialize(serializer)
    }
}

/// Writes frame records as JSON lines, reusing one buffer.
pub struct JsonLines {
    buffer: Vec<u8>,
}

impl JsonLines {
    pub fn new() -> JsonLines {
        JsonLines {
            buffer: Vec::with_capacity(4096),
        }
    }

    /// Formats one frame's record (with a trailing newline) and returns it.
    pub fn format(
        &mut self,
        frame: u64,
        source: &str,
        error: Option<&str>,
        faces: &[FaceResult],
        class_names: &[&str],
    ) -> &[u8] {
        self.buffer.clear();
        let record = FrameRecord {
            frame,
            source,
            error,
            faces: FaceList { faces, class_names },
        };
        // Writing into a Vec cannot fail, and every field serialises.
        if serde_json::to_writer(&mut self.buffer, &record).is_err() {
            self.buffer.clear();
        }
        self.buffer.push(b'\n');
        &self.buffer
    }

    /// Formats and writes one record to `out`.
    pub fn write(
        &mut self,
        out: &mut dyn Write,
        frame: u64,
        source: &str,
        error: Option<&str>,
        faces: &[FaceResult],
        class_names: &[&str],
    ) -> std::io::Result<()> {
        let line = self.format(frame, source, error, faces, class_names);
        out.write_all(line)
    }
}

impl Default for JsonLines {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::faces::MAX_CLASSES;

    const NAMES: [&str; 7] = [
        "neutral", "happy", "sad", "surprise", "fear", "disgust", "anger",
    ];

    #[test]
    fn record_matches_the_documented_schema() {
        let mut probs = [0.0; MAX_CLASSES];
        probs[..7].copy_from_slice(&[0.1, 0.6, 0.1, 0.05, 0.05, 0.05, 0.05]);
        let landmarks = Some([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, 8.0], [9.0, 10.0]]);
        let faces = [
            FaceResult::new([10.0, 20.0, 30.0, 40.0], 0.875, landmarks, probs),
            FaceResult::new([0.0, 0.0, 5.0, 5.0], 0.5, None, probs),
        ];
        let mut json = JsonLines::new();
        let line = json
            .format(3, "photos/a.jpg", None, &faces, &NAMES)
            .to_vec();
        assert_eq!(line.last(), Some(&b'\n'));
        assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
        let value: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(value["frame"], 3);
        assert_eq!(value["source"], "photos/a.jpg");
        assert!(value.get("error").is_none());
        let face = &value["faces"][0];
        assert_eq!(face["box"], serde_json::json!([10.0, 20.0, 30.0, 40.0]));
        assert_eq!(face["score"], 0.875);
        assert_eq!(face["landmarks"][4], serde_json::json!([9.0, 10.0]));
        assert_eq!(face["expression"], "happy");
        let probs = face["probs"].as_object().unwrap();
        let keys: Vec<&str> = probs.keys().map(String::as_str).collect();
        let mut sorted_names = NAMES.to_vec();
        sorted_names.sort();
        assert_eq!(keys, sorted_names);
        assert!((probs["happy"].as_f64().unwrap() - 0.6).abs() < 1e-6);
        assert_eq!(value["faces"][1]["landmarks"], serde_json::json!([]));
    }

    #[test]
    fn unreadable_frames_carry_an_error_and_no_faces() {
        let mut json = JsonLines::new();
        let line = json.format(0, "x.png", Some("cannot decode image x.png"), &[], &NAMES);
        let value: serde_json::Value = serde_json::from_slice(line).unwrap();
        assert_eq!(value["error"], "cannot decode image x.png");
        assert_eq!(value["faces"], serde_json::json!([]));
    }
}
