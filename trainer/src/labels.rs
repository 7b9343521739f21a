//! The canonical expression classes and the mapping of every dataset's names onto them.
//!
//! Every tensor, metric, confusion matrix and exported model in face2exp uses this one order,
//! so a class index means the same thing in the trainer, in `infer/` and in the demo.

use std::fmt;

/// Canonical class order. The first seven are the basic expressions every FER dataset has;
/// contempt is the optional eighth (AffectNet, RAF-DB compound sets).
pub const CLASSES: [&str; 8] = [
    "neutral", "happy", "sad", "surprise", "fear", "disgust", "anger", "contempt",
];

/// The seven basic expressions (FER2013, RAF-DB basic, AffectNet without contempt).
pub const NUM_BASIC: usize = 7;

/// A canonical expression class, stored as its index in [`CLASSES`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Expression(pub usize);

impl Expression {
    pub const NEUTRAL: Expression = Expression(0);
    pub const HAPPY: Expression = Expression(1);
    pub const SAD: Expression = Expression(2);
    pub const SURPRISE: Expression = Expression(3);
    pub const FEAR: Expression = Expression(4);
    pub const DISGUST: Expression = Expression(5);
    pub const ANGER: Expression = Expression(6);
    pub const CONTEMPT: Expression = Expression(7);

    pub fn index(self) -> usize {
        self.0
    }

    pub fn name(self) -> &'static str {
        CLASSES[self.0]
    }

    /// Parses a class name as datasets spell it in folder names or label files
    /// (case-insensitive; `angry`, `happiness`, `surprised`, `fearful`, ... are accepted).
    pub fn from_alias(name: &str) -> Option<Expression> {
        let lower = name.trim().to_ascii_lowercase();
        let index = match lower.as_str() {
            "neutral" | "neutrality" | "calm" => 0,
            "happy" | "happiness" | "joy" | "smile" => 1,
            "sad" | "sadness" => 2,
            "surprise" | "surprised" => 3,
            "fear" | "fearful" | "afraid" | "scared" => 4,
            "disgust" | "disgusted" => 5,
            "anger" | "angry" => 6,
            "contempt" | "contemptuous" => 7,
            _ => return None,
        };
        Some(Expression(index))
    }
}

impl fmt::Display for Expression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The class names of a model with `num_classes` outputs, in canonical order.
pub fn class_names(num_classes: usize) -> &'static [&'static str] {
    &CLASSES[..num_classes.min(CLASSES.len())]
}

/// FER2013's integer labels (CSV `emotion` column): 0 angry, 1 disgust, 2 fear, 3 happy,
/// 4 sad, 5 surprise, 6 neutral.
pub fn from_fer2013_id(id: u32) -> Option<Expression> {
    const MAP: [usize; 7] = [6, 5, 4, 1, 2, 3, 0];
    MAP.get(id as usize).map(|&i| Expression(i))
}

/// RAF-DB basic labels (1-based): 1 surprise, 2 fear, 3 disgust, 4 happiness, 5 sadness,
/// 6 anger, 7 neutral.
pub fn from_rafdb_id(id: u32) -> Option<Expression> {
    const MAP: [usize; 7] = [3, 4, 5, 1, 2, 6, 0];
    id.checked_sub(1)
        .and_then(|i| MAP.get(i as usize))
        .map(|&i| Expression(i))
}

/// AffectNet `expression` ids: 0 neutral, 1 happy, 2 sad, 3 surprise, 4 fear, 5 disgust,
/// 6 anger, 7 contempt; 8 none, 9 uncertain, 10 no-face are not expressions (None).
pub fn from_affectnet_id(id: u32) -> Option<Expression> {
    // AffectNet's order happens to be the canonical one.
    (id < 8).then_some(Expression(id as usize))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_map_to_canonical_classes() {
        assert_eq!(Expression::from_alias("Angry"), Some(Expression::ANGER));
        assert_eq!(Expression::from_alias("happiness"), Some(Expression::HAPPY));
        assert_eq!(
            Expression::from_alias("surprised"),
            Some(Expression::SURPRISE)
        );
        assert_eq!(Expression::from_alias("fearful"), Some(Expression::FEAR));
        assert_eq!(
            Expression::from_alias("disgusted"),
            Some(Expression::DISGUST)
        );
        assert_eq!(Expression::from_alias("sadness"), Some(Expression::SAD));
        assert_eq!(Expression::from_alias("smirk"), None);
    }

    #[test]
    fn dataset_ids_map_to_the_same_names() {
        let fer: Vec<_> = (0..7).map(|i| from_fer2013_id(i).unwrap().name()).collect();
        assert_eq!(
            fer,
            ["anger", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
        );
        let raf: Vec<_> = (1..8).map(|i| from_rafdb_id(i).unwrap().name()).collect();
        assert_eq!(
            raf,
            ["surprise", "fear", "disgust", "happy", "sad", "anger", "neutral"]
        );
        assert_eq!(from_rafdb_id(0), None);
        assert_eq!(from_affectnet_id(7), Some(Expression::CONTEMPT));
        assert_eq!(from_affectnet_id(8), None);
    }
}
