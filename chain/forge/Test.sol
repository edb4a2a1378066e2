// SPDX-License-Identifier: MIT OR Apache-2.0
pragma solidity ^0.8.24;

/// @notice The forge cheatcodes these tests use, at the address forge answers them on.
/// forge-std cannot be installed here (no git host, and npm holds only an ancient copy),
/// so this is the subset, declared as forge declares it: a cheatcode is matched by its
/// selector, so each signature must be exactly forge's.
interface Vm {
    function warp(uint256 newTimestamp) external;
    function deal(address account, uint256 newBalance) external;
    function prank(address msgSender) external;
    function startPrank(address msgSender) external;
    function stopPrank() external;
    function expectRevert() external;
    function expectRevert(bytes4 revertData) external;
    function expectRevert(bytes calldata revertData) external;
    function sign(uint256 privateKey, bytes32 digest) external pure returns (uint8 v, bytes32 r, bytes32 s);
    function addr(uint256 privateKey) external pure returns (address keyAddr);
    function assume(bool condition) external pure;
    function label(address account, string calldata newLabel) external;
}

/// @notice Access to the cheatcodes, for tests and for invariant handlers alike.
abstract contract Cheats {
    /// address(bytes20(uint160(uint256(keccak256("hevm cheat code"))))).
    Vm internal constant vm = Vm(0x7109709ECfa91a80626fF3989D68f67F5b1DD12D);

    /// x mapped onto [lo, hi] (hi >= lo), for fuzzed inputs.
    function bound(uint256 x, uint256 lo, uint256 hi) internal pure returns (uint256) {
        return lo + x % (hi - lo + 1);
    }

    function _str(uint256 x) internal pure returns (string memory) {
        if (x == 0) return "0";
        bytes memory b;
        while (x != 0) {
            b = abi.encodePacked(bytes1(uint8(48 + x % 10)), b);
            x /= 10;
        }
        return string(b);
    }
}

/// @notice A forge test: the assertions revert with a message naming the values, which forge
/// prints as the failure reason.
abstract contract Test is Cheats {
    function assertEq(uint256 got, uint256 want, string memory what) internal pure {
        if (got != want) revert(string.concat(what, ": got ", _str(got), ", want ", _str(want)));
    }

    function assertTrue(bool ok, string memory what) internal pure {
        if (!ok) revert(what);
    }
}
