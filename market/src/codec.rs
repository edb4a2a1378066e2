//! Wire and storage encoding (serde in postcard's format) and fixed-size byte arrays.

use serde::{Serialize, de::DeserializeOwned};

use crate::error::MarketError;

/// Encodes a wire or stored value.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Serialising into a Vec cannot fail for our types: they hold no maps with non-string
    // keys and no unsized sequences.
    postcard::to_stdvec(value).expect("postcard encoding into a Vec is infallible")
}

/// Decodes a value, rejecting trailing bytes so that one value has one encoding length.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, MarketError> {
    let what = std::any::type_name::<T>();
    let (value, rest) =
        postcard::take_from_bytes(bytes).map_err(|e| MarketError::Decode { what, reason: e.to_string() })?;
    if !rest.is_empty() {
        return Err(MarketError::Decode { what, reason: format!("{} trailing bytes", rest.len()) });
    }
    Ok(value)
}

/// Serde for `[u8; N]` as one byte string (serde's own arrays stop at 32 elements).
pub(crate) mod byte_array {
    use serde::{Deserializer, Serializer, de};

    pub(crate) fn serialize<S: Serializer, const N: usize>(bytes: &[u8; N], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(bytes)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>, const N: usize>(d: D) -> Result<[u8; N], D::Error> {
        struct Visitor<const N: usize>;
        impl<const N: usize> de::Visitor<'_> for Visitor<N> {
            type Value = [u8; N];
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "{N} bytes")
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<[u8; N], E> {
                v.try_into().map_err(|_| E::invalid_length(v.len(), &self))
            }
        }
        d.deserialize_bytes(Visitor::<N>)
    }
}
