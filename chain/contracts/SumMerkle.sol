// SPDX-License-Identifier: MIT OR Apache-2.0
pragma solidity ^0.8.24;

import {Channels} from "./Channels.sol";

/// @title Merkle-sum tree paths (docs/protocol.md, "Merkle trees" and "Proofs").
/// @notice The one implementation of the walk that Channels (receipts, payouts) and
/// DataDisputes (data entries) check proofs with. Internal functions: inlined into each
/// contract, so nothing is deployed or called across contracts.
library SumMerkle {
    /// A proof that is malformed or does not lead to the committed root.
    error BadProof();

    /// The hash of a leaf (digest, value).
    function leafHash(bytes32 digest, uint128 value) internal pure returns (bytes32) {
        return keccak256(abi.encodePacked(bytes1(0x00), digest, value));
    }

    /// The hash of an inner node over its children's hashes and sums.
    function nodeHash(bytes32 lh, uint128 ls, bytes32 rh, uint128 rs) internal pure returns (bytes32) {
        return keccak256(abi.encodePacked(bytes1(0x01), lh, ls, rh, rs));
    }

    /// Walks from a node (hash h, sum s) at `index` of a level of `count` nodes up to the
    /// root. Sums are carried in uint256 so an overflowing tree can still be walked (and
    /// proven invalid) instead of reverting. Returns the root, its total, the sum of the
    /// leaves to the left of the start, and whether a sum on the way overflowed uint128.
    function walk(bytes32 h, uint256 s, uint256 index, uint256 count, Channels.SumNode[] calldata siblings)
        internal
        pure
        returns (bytes32 root, uint256 total, uint256 left, bool overflow)
    {
        if (index >= count) revert BadProof();
        uint256 k;
        while (count > 1) {
            if (index & 1 == 1 || index != count - 1) {
                if (k >= siblings.length) revert BadProof();
                Channels.SumNode calldata sib = siblings[k++];
                if (s > type(uint128).max) overflow = true;
                if (index & 1 == 0) {
                    h = nodeHash(h, uint128(s), sib.hash, sib.sum);
                } else {
                    h = nodeHash(sib.hash, sib.sum, h, uint128(s));
                    left += sib.sum;
                }
                s += sib.sum;
            }
            index >>= 1;
            count = (count + 1) >> 1;
        }
        if (k != siblings.length) revert BadProof();
        if (s > type(uint128).max) overflow = true;
        return (h, s, left, overflow);
    }
}
