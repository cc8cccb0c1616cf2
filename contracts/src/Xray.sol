// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {IXray} from "./IXray.sol";

/**
 * @title Xray
 * @notice Anchors the fingerprints of medical images so that any later change to an image
 * can be detected. Roles follow the seed paper: the admin (the seed's *gov*), hospitals,
 * doctors, recorders (the gateway's account) and auditors.
 * @dev Access control is OpenZeppelin's {AccessControl}; role changes therefore also emit
 * the standard `RoleGranted`/`RoleRevoked` events beside this contract's own event.
 * Every state change emits one {IXray} event after the change (a squatter displaced by
 * {supersedeBatchedImage} or {retireBatchedImage} adds an {OwnershipRestored} before it).
 *
 * Trust model: only Recorders write records, and every record key has an owner, the
 * Recorder that anchored it first. Only the owner or the admin supersedes or retires it.
 * A batched key is unknown here until its inclusion proof is shown, so the batch's
 * recorder proves it to reclaim a key that another account wrote directly after the batch.
 */
contract Xray is IXray, AccessControl {
    /// @notice Hospitals manage the doctors they added.
    bytes32 public constant HOSPITAL_ROLE = keccak256("HOSPITAL_ROLE");
    /// @notice Doctors are named in the seed's views; they no longer record images.
    bytes32 public constant DOCTOR_ROLE = keccak256("DOCTOR_ROLE");
    /// @notice Recorders (gateways) record images and anchor batches.
    bytes32 public constant RECORDER_ROLE = keccak256("RECORDER_ROLE");
    /// @notice Auditors read; the role exists so that off-chain services can check it.
    bytes32 public constant AUDITOR_ROLE = keccak256("AUDITOR_ROLE");

    /// @dev One storage slot: who, when and why.
    struct Retirement {
        address by;
        uint40 retiredAt;
        RetireReason reason;
    }

    /// @dev One storage slot: the batch recorder that owns a key, and the batch that proved it.
    struct Claim {
        address owner;
        uint64 batchId;
    }

    struct PatientEntry {
        bytes32 recordKey;
        uint32 version;
    }

    mapping(bytes32 recordKey => ImageVersion[]) private _versions;
    mapping(bytes32 recordKey => Retirement) private _retirements;
    mapping(bytes32 patientKey => PatientEntry[]) private _patientImages;
    mapping(address account => string) private _names;
    Batch[] private _batches;
    mapping(bytes32 root => uint256) private _batchIds;
    /// @dev The kind of each batch that is not an image batch: an image batch writes no
    /// extra slot, so that {recordBatch} costs what it did before access batches existed.
    mapping(uint256 batchId => BatchKind) private _batchKinds;
    /// @dev Keys claimed through a batch proof, with the batch that proved them. A key
    /// without a claim is owned by the recorder of its first stored version, so that
    /// {recordImage} writes no extra slot.
    mapping(bytes32 recordKey => Claim) private _claims;
    /// @dev The Hospital that added each Doctor; zero when the admin did (or none is one).
    mapping(address doctor => address) private _doctorHospitals;

    /// @param admin The account that receives the admin role (the seed's *gov*).
    constructor(address admin) {
        if (admin == address(0)) revert XrayZeroValue();
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
    }

    /// @dev Reverts with {XrayNotRecorder} unless the caller holds the Recorder role.
    modifier onlyRecorder() {
        address sender = _msgSender();
        if (!hasRole(RECORDER_ROLE, sender)) revert XrayNotRecorder(sender);
        _;
    }

    /// @inheritdoc IXray
    function setPermission(address account, string calldata name, UserType userType, bool enabled) external {
        bytes32 role = _roleOf(userType);
        if (account == address(0)) revert XrayZeroValue();
        bool byHospital = _checkPermissionManager(account, userType);
        if (byHospital) _checkHospitalMayName(account, enabled);
        if (bytes(name).length != 0) _names[account] = name;
        if (enabled) {
            if (_grantRole(role, account) && byHospital) _doctorHospitals[account] = _msgSender();
        } else {
            _revokeRole(role, account);
            if (userType == UserType.Doctor) delete _doctorHospitals[account];
        }
        emit PermissionSet(account, name, userType, enabled, _msgSender());
    }

    /// @inheritdoc IXray
    function removePermission(address account) external {
        UserType highest = _highestUserType(account);
        if (highest == UserType.None) revert XrayNoPermission(account);
        // A hospital may dismiss a doctor it added; anyone holding more needs the admin.
        if (_checkPermissionManager(account, highest)) _checkOwnDoctor(account);
        _revokeRole(HOSPITAL_ROLE, account);
        _revokeRole(DOCTOR_ROLE, account);
        _revokeRole(RECORDER_ROLE, account);
        _revokeRole(AUDITOR_ROLE, account);
        delete _doctorHospitals[account];
        emit PermissionRemoved(account, _msgSender());
    }

    /// @inheritdoc IXray
    function recordImage(
        bytes32 recordKey,
        bytes32 patientKey,
        bytes32 digest,
        bytes32 pixelDigest,
        string calldata bodyPart,
        string calldata modality
    ) external onlyRecorder {
        if (recordKey == bytes32(0) || patientKey == bytes32(0) || digest == bytes32(0)) revert XrayZeroValue();
        if (_versions[recordKey].length != 0) revert XrayRecordExists(recordKey);
        // a batched image that was retired stays retired: no new version under its key
        if (_retirements[recordKey].retiredAt != 0) revert XrayRecordRetired(recordKey);
        _pushVersion(recordKey, patientKey, digest, pixelDigest, bodyPart, modality);
        emit ImageRecorded(recordKey, patientKey, _msgSender(), digest, pixelDigest, bodyPart, modality);
    }

    /// @inheritdoc IXray
    function supersedeImage(
        bytes32 recordKey,
        bytes32 patientKey,
        bytes32 digest,
        bytes32 pixelDigest,
        string calldata bodyPart,
        string calldata modality
    ) external {
        if (patientKey == bytes32(0) || digest == bytes32(0)) revert XrayZeroValue();
        ImageVersion[] storage versions = _versions[recordKey];
        uint256 count = versions.length;
        if (count == 0) revert XrayUnknownRecord(recordKey);
        _checkOwnerOrAdmin(recordKey, _ownerOf(recordKey, versions));
        if (_retirements[recordKey].retiredAt != 0) revert XrayRecordRetired(recordKey);
        _supersede(recordKey, versions[count - 1].digest, patientKey, digest, pixelDigest, bodyPart, modality);
    }

    /// @inheritdoc IXray
    function supersedeBatchedImage(bytes32 recordKey, BatchedLeaf calldata leaf, NewVersion calldata version)
        external
    {
        if (version.patientKey == bytes32(0) || version.digest == bytes32(0)) revert XrayZeroValue();
        _claimBatched(recordKey, leaf);
        if (_retirements[recordKey].retiredAt != 0) revert XrayRecordRetired(recordKey);
        ImageVersion[] storage versions = _versions[recordKey];
        uint256 count = versions.length;
        // the batched leaf is the version a key unknown here supersedes
        bytes32 previousDigest = count == 0 ? leaf.digest : versions[count - 1].digest;
        _supersede(
            recordKey,
            previousDigest,
            version.patientKey,
            version.digest,
            version.pixelDigest,
            version.bodyPart,
            version.modality
        );
    }

    /// @inheritdoc IXray
    function recordBatch(bytes32 root, uint32 count) external onlyRecorder returns (uint256 batchId) {
        batchId = _pushBatch(root, count);
        emit BatchAnchored(batchId, root, _msgSender(), count);
    }

    /// @inheritdoc IXray
    function recordAccessBatch(bytes32 root, uint32 count) external onlyRecorder returns (uint256 batchId) {
        batchId = _pushBatch(root, count);
        _batchKinds[batchId] = BatchKind.Access;
        emit AccessBatchAnchored(batchId, root, _msgSender(), count);
    }

    /// @dev Append a batch of `count` leaves under `root` to the one sequence of batches.
    function _pushBatch(bytes32 root, uint32 count) private returns (uint256 batchId) {
        if (root == bytes32(0)) revert XrayZeroValue();
        if (count == 0) revert XrayEmptyBatch();
        uint256 existing = _batchIds[root];
        if (existing != 0) revert XrayBatchExists(root, existing);
        _batches.push(
            Batch({
                root: root,
                count: count,
                recorder: _msgSender(),
                anchoredAt: uint32(block.timestamp),
                blockNumber: uint32(block.number)
            })
        );
        batchId = _batches.length;
        _batchIds[root] = batchId;
    }

    /// @inheritdoc IXray
    function retireImage(bytes32 recordKey, RetireReason reason) external {
        if (reason == RetireReason.None) revert XrayInvalidReason();
        ImageVersion[] storage versions = _versions[recordKey];
        if (versions.length == 0) revert XrayUnknownRecord(recordKey);
        _checkOwnerOrAdmin(recordKey, _ownerOf(recordKey, versions));
        _retire(recordKey, reason);
    }

    /// @inheritdoc IXray
    function retireBatchedImage(bytes32 recordKey, BatchedLeaf calldata leaf, RetireReason reason) external {
        if (reason == RetireReason.None) revert XrayInvalidReason();
        _claimBatched(recordKey, leaf);
        _retire(recordKey, reason);
    }

    /// @inheritdoc IXray
    function ownerOf(bytes32 recordKey) external view returns (address) {
        return _ownerOf(recordKey, _versions[recordKey]);
    }

    /**
     * @dev Prove `leaf` anchored `recordKey` in its batch, settle the key's owner, and check
     * that the caller is that owner (still a Recorder) or the admin. The earliest anchoring
     * owns the key: the proven batch, unless the key was written directly in an earlier
     * block or claimed through an earlier batch (then the batch's recorder is refused). A
     * displaced owner's retirement of the key is cleared with it.
     */
    function _claimBatched(bytes32 recordKey, BatchedLeaf calldata leaf) private {
        uint256 batchId = leaf.batchId;
        if (batchId == 0 || batchId > _batches.length) revert XrayUnknownBatch(batchId);
        if (_batchKinds[batchId] != BatchKind.Image) revert XrayNotImageBatch(batchId);
        Batch storage batch = _batches[batchId - 1];
        bytes32 node =
            sha256(abi.encodePacked(bytes1(0x00), recordKey, leaf.patientKey, leaf.digest, leaf.pixelDigest));
        if (!_included(node, leaf.index, batch.count, leaf.proof, batch.root)) {
            revert XrayNotInBatch(recordKey, batchId);
        }
        address batchRecorder = batch.recorder;
        ImageVersion[] storage versions = _versions[recordKey];
        Claim storage claim = _claims[recordKey];
        address owner = claim.owner;
        bool earlier;
        if (owner != address(0)) {
            earlier = claim.batchId <= batchId;
        } else if (versions.length != 0) {
            owner = versions[0].recorder;
            earlier = versions[0].blockNumber < batch.blockNumber;
        }
        if (owner == batchRecorder || earlier) {
            _checkOwnerOrAdmin(recordKey, owner);
            return;
        }
        _checkOwnerOrAdmin(recordKey, batchRecorder);
        _claims[recordKey] = Claim(batchRecorder, uint64(batchId));
        if (owner != address(0)) {
            // a retirement by the displaced account was never the owner's: it is void
            if (_retirements[recordKey].by == owner) delete _retirements[recordKey];
            emit OwnershipRestored(recordKey, owner, batchRecorder);
        }
    }

    /// @dev The owner of `recordKey` (whose stored versions are `versions`), zero if unknown.
    function _ownerOf(bytes32 recordKey, ImageVersion[] storage versions) private view returns (address) {
        address owner = _claims[recordKey].owner;
        if (owner != address(0) || versions.length == 0) return owner;
        return versions[0].recorder;
    }

    /**
     * @dev Revert unless the caller is the admin, or is `owner` and still a Recorder: with
     * {XrayNotRecorder} for a caller that is no Recorder, {XrayNotOwner} for another Recorder.
     */
    function _checkOwnerOrAdmin(bytes32 recordKey, address owner) private view {
        address sender = _msgSender();
        if (hasRole(DEFAULT_ADMIN_ROLE, sender)) return;
        if (!hasRole(RECORDER_ROLE, sender)) revert XrayNotRecorder(sender);
        if (sender != owner) revert XrayNotOwner(recordKey, sender, owner);
    }

    /// @dev Append a version that supersedes `previousDigest` and announce it.
    function _supersede(
        bytes32 recordKey,
        bytes32 previousDigest,
        bytes32 patientKey,
        bytes32 digest,
        bytes32 pixelDigest,
        string calldata bodyPart,
        string calldata modality
    ) private {
        if (previousDigest == digest) revert XrayUnchangedDigest(recordKey, digest);
        uint32 version = _pushVersion(recordKey, patientKey, digest, pixelDigest, bodyPart, modality);
        emit ImageSuperseded(recordKey, patientKey, _msgSender(), version, previousDigest, digest, pixelDigest);
    }

    /// @dev RFC 9162 §2.1.3.2: verify an inclusion proof of `leaf` at `index` in a tree of `size`.
    function _included(bytes32 leaf, uint256 index, uint256 size, bytes32[] calldata proof, bytes32 root)
        private
        pure
        returns (bool)
    {
        if (index >= size) return false;
        uint256 fn = index;
        uint256 sn = size - 1;
        bytes32 node = leaf;
        for (uint256 i = 0; i < proof.length; ++i) {
            if (sn == 0) return false;
            if (fn & 1 == 1 || fn == sn) {
                node = sha256(abi.encodePacked(bytes1(0x01), proof[i], node));
                if (fn & 1 == 0) {
                    while (fn != 0 && fn & 1 == 0) {
                        fn >>= 1;
                        sn >>= 1;
                    }
                }
            } else {
                node = sha256(abi.encodePacked(bytes1(0x01), node, proof[i]));
            }
            fn >>= 1;
            sn >>= 1;
        }
        return sn == 0 && node == root;
    }

    /// @dev Mark `recordKey` retired by the caller; the record (or batch) stays.
    function _retire(bytes32 recordKey, RetireReason reason) private {
        address sender = _msgSender();
        Retirement storage retirement = _retirements[recordKey];
        if (retirement.retiredAt != 0) revert XrayRecordRetired(recordKey);
        retirement.by = sender;
        retirement.retiredAt = uint40(block.timestamp);
        retirement.reason = reason;
        emit ImageRetired(recordKey, sender, reason);
    }

    /// @inheritdoc IXray
    function imageOf(bytes32 recordKey) external view returns (Image memory image) {
        ImageVersion[] storage versions = _versions[recordKey];
        uint256 count = versions.length;
        if (count == 0) revert XrayUnknownRecord(recordKey);
        Retirement storage retirement = _retirements[recordKey];
        image.current = versions[count - 1];
        image.versions = uint32(count);
        image.retired = retirement.retiredAt != 0;
        image.retiredBy = retirement.by;
        image.retiredAt = retirement.retiredAt;
        image.retireReason = retirement.reason;
    }

    /// @inheritdoc IXray
    function versionOf(bytes32 recordKey, uint256 version) external view returns (ImageVersion memory) {
        ImageVersion[] storage versions = _versions[recordKey];
        if (version == 0 || version > versions.length) revert XrayUnknownVersion(recordKey, version);
        return versions[version - 1];
    }

    /// @inheritdoc IXray
    function batchOf(uint256 batchId) external view returns (Batch memory) {
        if (batchId == 0 || batchId > _batches.length) revert XrayUnknownBatch(batchId);
        return _batches[batchId - 1];
    }

    /// @inheritdoc IXray
    function batchKindOf(uint256 batchId) external view returns (BatchKind) {
        if (batchId == 0 || batchId > _batches.length) revert XrayUnknownBatch(batchId);
        return _batchKinds[batchId];
    }

    /// @inheritdoc IXray
    function batchIdOf(bytes32 root) external view returns (uint256) {
        return _batchIds[root];
    }

    /// @inheritdoc IXray
    function batchCount() external view returns (uint256) {
        return _batches.length;
    }

    /// @inheritdoc IXray
    function nameOf(address account) external view returns (string memory) {
        return _names[account];
    }

    /// @inheritdoc IXray
    function getXrayhashCount(bytes32 patientKey) external view returns (uint256) {
        return _patientImages[patientKey].length;
    }

    /// @inheritdoc IXray
    function getXrayhash(bytes32 patientKey, uint256 index)
        external
        view
        returns (string memory recorderName, string memory bodyPart, bytes32 digest)
    {
        PatientEntry[] storage entries = _patientImages[patientKey];
        if (index >= entries.length) revert XrayIndexOutOfRange(patientKey, index, entries.length);
        PatientEntry storage entry = entries[index];
        ImageVersion storage version = _versions[entry.recordKey][entry.version - 1];
        return (_names[version.recorder], version.bodyPart, version.digest);
    }

    /// @dev Appends a version and indexes it under its patient; returns its 1-based number.
    function _pushVersion(
        bytes32 recordKey,
        bytes32 patientKey,
        bytes32 digest,
        bytes32 pixelDigest,
        string calldata bodyPart,
        string calldata modality
    ) private returns (uint32 version) {
        ImageVersion[] storage versions = _versions[recordKey];
        versions.push(
            ImageVersion({
                digest: digest,
                pixelDigest: pixelDigest,
                patientKey: patientKey,
                recorder: _msgSender(),
                recordedAt: uint40(block.timestamp),
                blockNumber: uint40(block.number),
                bodyPart: bodyPart,
                modality: modality
            })
        );
        version = uint32(versions.length);
        _patientImages[patientKey].push(PatientEntry({recordKey: recordKey, version: version}));
    }

    /// @dev Maps a seed `UserType` onto its role; `None` is not a permission.
    function _roleOf(UserType userType) private pure returns (bytes32) {
        if (userType == UserType.Doctor) return DOCTOR_ROLE;
        if (userType == UserType.Hospital) return HOSPITAL_ROLE;
        if (userType == UserType.Recorder) return RECORDER_ROLE;
        if (userType == UserType.Auditor) return AUDITOR_ROLE;
        revert XrayInvalidUserType(userType);
    }

    /// @dev The most privileged xray permission `account` holds, `None` if it holds none.
    function _highestUserType(address account) private view returns (UserType) {
        if (hasRole(HOSPITAL_ROLE, account)) return UserType.Hospital;
        if (hasRole(RECORDER_ROLE, account)) return UserType.Recorder;
        if (hasRole(AUDITOR_ROLE, account)) return UserType.Auditor;
        if (hasRole(DOCTOR_ROLE, account)) return UserType.Doctor;
        return UserType.None;
    }

    /**
     * @dev The admin manages every permission; a Hospital manages Doctors only, and never
     * its own. Returns true when the caller acts as a Hospital (not as the admin).
     */
    function _checkPermissionManager(address account, UserType userType) private view returns (bool byHospital) {
        address sender = _msgSender();
        if (hasRole(DEFAULT_ADMIN_ROLE, sender)) return false;
        if (userType != UserType.Doctor || !hasRole(HOSPITAL_ROLE, sender)) {
            revert XrayNotPermissionManager(sender, userType);
        }
        if (account == sender) revert XraySelfManagement(sender);
        return true;
    }

    /**
     * @dev A Hospital names (grants, renames, revokes) only accounts that hold no other role:
     * its own doctors, or, granting, an account that holds no role at all.
     */
    function _checkHospitalMayName(address account, bool enabled) private view {
        if (
            hasRole(DEFAULT_ADMIN_ROLE, account) || hasRole(HOSPITAL_ROLE, account)
                || hasRole(RECORDER_ROLE, account) || hasRole(AUDITOR_ROLE, account)
        ) revert XrayHoldsOtherRole(account);
        if (enabled && !hasRole(DOCTOR_ROLE, account)) return;
        _checkOwnDoctor(account);
    }

    /// @dev Revert unless the calling Hospital added Doctor `account` itself.
    function _checkOwnDoctor(address account) private view {
        if (_doctorHospitals[account] != _msgSender()) revert XrayNotOwnDoctor(account, _msgSender());
    }

    // -- grants (issue #16) ----------------------------------------------------------------

    AccessGrant[] private _grants;
    mapping(bytes32 key => uint256[]) private _grantsByKey;

    /// @inheritdoc IXray
    function grantAccess(bytes32 grantee, bytes32 patientKey, bytes32 studyKey, uint40 expiresAt)
        external
        returns (uint256 grantId)
    {
        address sender = _msgSender();
        UserType held = _highestUserType(sender);
        if (!hasRole(DEFAULT_ADMIN_ROLE, sender) && (held == UserType.None || held == UserType.Auditor)) {
            revert XrayNotGranter(sender);
        }
        if (grantee == bytes32(0) || patientKey == bytes32(0)) revert XrayZeroValue();
        if (expiresAt <= block.timestamp) revert XrayGrantExpiry(expiresAt);
        _grants.push(
            AccessGrant({
                grantee: grantee,
                patientKey: patientKey,
                studyKey: studyKey,
                granter: sender,
                expiresAt: expiresAt,
                grantedAt: uint40(block.timestamp),
                revokedBy: address(0),
                revokedAt: 0
            })
        );
        grantId = _grants.length;
        _grantsByKey[patientKey].push(grantId);
        if (studyKey != bytes32(0)) _grantsByKey[studyKey].push(grantId);
        emit AccessGranted(grantId, grantee, patientKey, studyKey, expiresAt, sender);
    }

    /// @inheritdoc IXray
    function revokeAccess(uint256 grantId) external {
        AccessGrant storage grant = _grantAt(grantId);
        address sender = _msgSender();
        if (grant.granter != sender && !hasRole(DEFAULT_ADMIN_ROLE, sender)) revert XrayNotGranter(sender);
        if (grant.revokedBy != address(0)) revert XrayGrantRevoked(grantId);
        grant.revokedBy = sender;
        grant.revokedAt = uint40(block.timestamp);
        emit AccessRevoked(grantId, sender);
    }

    /// @inheritdoc IXray
    function grantOf(uint256 grantId) external view returns (AccessGrant memory) {
        return _grantAt(grantId);
    }

    /// @inheritdoc IXray
    function grantsOf(bytes32 key) external view returns (uint256[] memory) {
        return _grantsByKey[key];
    }

    /// @inheritdoc IXray
    function grantCount() external view returns (uint256) {
        return _grants.length;
    }

    /// @dev Grant `grantId`, or revert with {XrayUnknownGrant}.
    function _grantAt(uint256 grantId) private view returns (AccessGrant storage) {
        if (grantId == 0 || grantId > _grants.length) revert XrayUnknownGrant(grantId);
        return _grants[grantId - 1];
    }
}
