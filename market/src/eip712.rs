//! The EIP-712 structs, declared in Solidity syntax so that the contracts and this crate hash
//! the same type strings (see `docs/protocol.md`).

use alloy_sol_types::{Eip712Domain, sol};

use crate::types::Domain;

sol! {
    /// EIP-712 form of [`crate::Receipt`].
    #[derive(Debug)]
    struct Receipt {
        bytes32 channel;
        uint64 seq;
        address payer;
        address provider;
        bytes32 payerKey;
        bytes32 providerKey;
        bytes32 model;
        bytes32 requestHash;
        bytes32 responseHash;
        uint32 inputTokens;
        uint32 outputTokens;
        uint128 priceIn;
        uint128 priceOut;
        uint128 value;
        uint128 cumulative;
        bytes32 attributionRoot;
        uint64 timestamp;
    }

    /// EIP-712 form of [`crate::Voucher`].
    #[derive(Debug)]
    struct Voucher {
        bytes32 channel;
        uint64 seq;
        uint128 cumulative;
        bytes32 receiptsRoot;
    }
}

/// The EIP-712 domain name of attrinet.
pub const DOMAIN_NAME: &str = "attrinet";
/// The EIP-712 domain version of this protocol.
pub const DOMAIN_VERSION: &str = "1";

impl Domain {
    /// This domain as alloy's EIP-712 domain.
    pub fn eip712(&self) -> Eip712Domain {
        Eip712Domain::new(
            Some(DOMAIN_NAME.into()),
            Some(DOMAIN_VERSION.into()),
            Some(alloy_primitives::U256::from(self.chain_id)),
            Some(self.verifying_contract),
            None,
        )
    }
}

#[cfg(test)]
mod tests {
    use alloy_sol_types::SolStruct;

    #[test]
    fn type_strings_match_the_spec() {
        let spec = include_str!("../../docs/protocol.md");
        let receipt = super::Receipt::eip712_encode_type();
        let voucher = super::Voucher::eip712_encode_type();
        assert!(spec.contains(&*receipt), "docs/protocol.md lacks {receipt}");
        assert!(spec.contains(&*voucher), "docs/protocol.md lacks {voucher}");
    }
}
