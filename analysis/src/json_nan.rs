//! Numbers that may be undefined (NaN) in `result.json`: JSON has no NaN, so an undefined value
//! is written as `null` and read back as NaN (`#[serde(with = "crate::json_nan")]`; the
//! `vec` submodule does the same element-wise). Infinities are written as `null` too (serde_json
//! would do so silently and then fail to read the file back).

use serde::{Deserialize, Deserializer, Serializer};

pub fn serialize<S: Serializer>(value: &f64, serializer: S) -> Result<S::Ok, S::Error> {
    if value.is_finite() {
        serializer.serialize_f64(*value)
    } else {
        serializer.serialize_none()
    }
}

pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(deserializer)?.unwrap_or(f64::NAN))
}

/// The same for a list of numbers.
pub mod vec {
    use serde::ser::SerializeSeq;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(values: &[f64], serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(values.len()))?;
        for v in values {
            seq.serialize_element(&v.is_finite().then_some(*v))?;
        }
        seq.end()
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<f64>, D::Error> {
        let values = Vec::<Option<f64>>::deserialize(deserializer)?;
        Ok(values.into_iter().map(|v| v.unwrap_or(f64::NAN)).collect())
    }
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    #[derive(Serialize, Deserialize)]
    struct Cell {
        #[serde(with = "crate::json_nan")]
        p: f64,
        #[serde(with = "crate::json_nan::vec")]
        values: Vec<f64>,
    }

    #[test]
    fn nan_round_trips_through_null() {
        let text = serde_json::to_string(&Cell {
            p: f64::NAN,
            values: vec![1.5, f64::NAN],
        })
        .unwrap();
        assert_eq!(text, r#"{"p":null,"values":[1.5,null]}"#);
        let back: Cell = serde_json::from_str(&text).unwrap();
        assert!(back.p.is_nan() && back.values[0] == 1.5 && back.values[1].is_nan());
        let back: Cell = serde_json::from_str(r#"{"p":0.25,"values":[]}"#).unwrap();
        assert_eq!(back.p, 0.25);
    }
}
