// SPDX-License-Identifier: MIT OR Apache-2.0
pragma solidity ^0.8.24;

import {Registry} from "../contracts/Registry.sol";
import {Channels} from "../contracts/Channels.sol";
import {Test} from "./Test.sol";
import {Fixture} from "./Fixture.sol";

/// @notice Issue 14's attacks on the contracts, each performed as its attacker would: every
/// test failed on the contracts before its fix (docs/security.md quotes the failures) and
/// shows the attack failing after it.
contract AttacksTest is Test, Fixture {
    uint64 internal constant WINDOW = 100;
    uint64 internal constant THAW = 2 * WINDOW;
    uint256 internal constant PROVIDER_PK = 0xB0B0;
    uint256 internal constant PAYER_PK = 0xC11E;
    uint256 internal constant DEPOSIT = 10 ether;

    address internal provider;

    function setUp() public {
        vm.warp(1_000_000);
        _deploy(WINDOW, THAW);
        provider = _registerNode(PROVIDER_PK, BOND);
    }

    /// Attack 5: a provider locks a thawed payer's refund. withdrawDeposit waits for the
    /// pending settlement, and settle ignored the thaw; so after the thaw the provider
    /// finalized and at once settled one more receipt (each its own voucher), again and
    /// again, and the payer never found the channel without a pending settlement.
    function test_attack5_settlingOneReceiptAtATimeAfterTheThawCannotLockTheRefund() public {
        bytes32 id = _open(PAYER_PK, provider, DEPOSIT);
        for (uint256 i = 0; i < 10; i++) {
            _serve(id, MODEL_A, 100, 20);
        }
        vm.prank(vm.addr(PAYER_PK));
        channels.thaw(id);
        vm.warp(channels.channel(id).thawEnd);

        uint256 settledAfterThaw;
        uint256 refund;
        bool refunded;
        Channels.Payout[] memory pendingPayouts;
        for (uint256 round = 0; round < 10 && !refunded; round++) {
            // The provider, first in every block: finalize what is due, settle one receipt more.
            if (channels.pending(id).deadline != 0) {
                (bool fin,) = _tryFinalize(id, pendingPayouts);
                assertTrue(fin, "the provider finalizes its settlement after its window");
            }
            uint64 next = channels.channel(id).settledSeq + 1;
            if (next <= served[id].length) {
                Settlement memory s = _settlement(id, next);
                (bool ok,) = _trySettle(id, s);
                if (ok) {
                    settledAfterThaw++;
                    pendingPayouts = s.payouts;
                }
            }
            // The payer, as soon as it can.
            (refunded, refund,) = _tryWithdrawDeposit(id);
            vm.warp(block.timestamp + WINDOW);
        }
        assertTrue(
            refunded,
            string.concat(
                "the payer's refund is still locked ",
                _str(10 * WINDOW),
                " s after its thaw ended: the provider settled ",
                _str(settledAfterThaw),
                " single-receipt vouchers after it"
            )
        );
        assertEq(settledAfterThaw, 1, "settlements after the thaw's end");
        assertEq(refund, DEPOSIT - served[id][0].cumulative, "refund: the deposit less the final settlement");
    }

    /// Attack 6: a thaw shorter than two challenge windows. Anyone may finalize, so a payer
    /// finalizes the provider's pending settlement and withdraws its deposit in one
    /// transaction the moment both the window and its thaw are over, before the provider
    /// (whose watcher wakes up half a window later) settles its newer voucher.
    function test_attack6_aPayerCannotFinalizeAndWithdrawAheadOfTheProvidersNewerVoucher() public {
        // A deployment whose thaw is a single window: refused, or attacked.
        (Registry r0, Channels c0, address p0) = (registry, channels, provider);
        Registry fresh = new Registry(TREASURY, UNBOND);
        try new Channels(fresh, WINDOW, WINDOW, BOND) returns (Channels weak) {
            _bind(fresh, weak);
            provider = _registerNode(PROVIDER_PK, BOND);
            (bool paid, uint256 lost) = _raceAtTheWindowsEnd();
            assertTrue(
                paid,
                string.concat(
                    "thawDelay = challengeWindow was accepted, and the payer finalized and withdrew before the provider settled its newer voucher: the provider lost ",
                    _str(lost),
                    " wei"
                )
            );
        } catch (bytes memory err) {
            bytes memory expected = abi.encodeWithSignature("ThawTooShort(uint64,uint256)", WINDOW, 2 * uint256(WINDOW));
            assertTrue(keccak256(err) == keccak256(expected), "the constructor refuses with ThawTooShort");
        }
        (registry, channels, provider) = (r0, c0, p0);
        // The least thaw allowed (2 x window, this suite's setUp) leaves the provider a window.
        (bool paidAtMinimum, uint256 lostAtMinimum) = _raceAtTheWindowsEnd();
        assertTrue(paidAtMinimum, string.concat("with thawDelay = 2 x window the provider lost ", _str(lostAtMinimum)));
    }

    /// The race of attack 6 on the current deployment: returns whether the provider's newer
    /// voucher was paid, and otherwise what it lost.
    function _raceAtTheWindowsEnd() internal returns (bool paid, uint256 lost) {
        bytes32 id = _open(PAYER_PK, provider, DEPOSIT);
        _serve(id, MODEL_A, 100, 20);
        Settlement memory first = _settlement(id, 1);
        (bool ok,) = _trySettle(id, first);
        assertTrue(ok, "the first voucher settles");
        uint64 deadline = channels.pending(id).deadline;
        // Served and co-signed on, then the payer thaws.
        _serve(id, MODEL_B, 1_000, 300);
        vm.warp(block.timestamp + 1);
        vm.prank(vm.addr(PAYER_PK));
        channels.thaw(id);
        uint64 thawEnd = channels.channel(id).thawEnd;

        uint256 strike = deadline > thawEnd ? deadline : thawEnd;
        uint256 wake = deadline + WINDOW / 2;
        if (strike < wake) {
            // The payer's one transaction: finalize, withdraw.
            vm.warp(strike);
            (bool fin,) = _tryFinalize(id, first.payouts);
            assertTrue(fin, "the payer finalizes the provider's settlement");
            (bool out,,) = _tryWithdrawDeposit(id);
            assertTrue(out, "the payer withdraws");
        }
        vm.warp(wake > block.timestamp ? wake : block.timestamp);
        if (channels.pending(id).deadline != 0) _tryFinalize(id, first.payouts);
        (paid,) = _trySettle(id, _settlement(id, 2));
        if (!paid) lost = served[id][1].value;
    }

    /// Attack 7: a provider disputes its own fraud. _void paid the whole slashed bond to the
    /// disputer, so a provider that settled a wrong split and disputed it from a second
    /// address of its own got its bond back: fraud without risk (and, unless watched
    /// closely, a free option on whether anyone notices). Front-running of honest
    /// disputers by copiers is not addressed by this test or its fix.
    function test_attack7_aProviderDisputingItsOwnFraudLosesHalfItsBond() public {
        address alt = address(0xA17); // the provider's second address
        bytes32 id = _open(PAYER_PK, provider, DEPOSIT);
        _serve(id, MODEL_A, 1_000, 100);
        _serve(id, MODEL_A, 2_000, 300);
        Settlement memory s = _settlement(id, 2);
        // A wrong split: one wei of the owner's part moved to the node's. Every sum still holds.
        s.payouts[0].node += 1;
        s.payouts[0].owner -= 1;
        (bool ok,) = _trySettle(id, s);
        assertTrue(ok, "the fraudulent settlement is accepted (settle checks sums only)");

        uint256 wealthBefore = uint256(registry.bondOf(provider)) + provider.balance + alt.balance;
        vm.prank(alt);
        channels.disputeSplit(id, s.payouts, 0);
        vm.prank(alt);
        channels.withdraw();
        uint256 wealthAfter = uint256(registry.bondOf(provider)) + provider.balance + alt.balance;

        uint256 recovered = wealthAfter + BOND - wealthBefore;
        assertTrue(
            wealthAfter + BOND / 2 <= wealthBefore,
            string.concat(
                "the provider disputed its own fraud from a second address and recovered ",
                _str(recovered),
                " wei of its ",
                _str(BOND),
                " wei bond"
            )
        );
        assertEq(channels.channel(id).settled, 0, "the void settlement paid nothing");
    }
}
