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
 * Every state change emits exactly one {IXray} event, after the change.
 */
contract Xray is IXray, AccessControl {
    /// @notice Hospitals manage their doctors and may retire images.
    bytes32 public constant HOSPITAL_ROLE = keccak256("HOSPITAL_ROLE");
    /// @notice Doctors may record images (the seed's `setXrayhash`).
    bytes32 public constant DOCTOR_ROLE = keccak256("DOCTOR_ROLE");
    /// @notice Recorders (gateways) record images and anchor batches.
    bytes32 public constant RECORDER_ROLE = keccak256("RECORDER_ROLE");
    /// @notice Auditors read; the role exists so that off-chain services can check it.
    bytes32 public constant AUDITOR_ROLE = keccak256("AUDITOR_ROLE");

    struct Retirement {
        address by;
        uint40 retiredAt;
        string reason;
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

    /// @param admin The account that receives the admin role (the seed's *gov*).
    constructor(address admin) {
        if (admin == address(0)) revert XrayZeroValue();
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
    }

    /// @dev Reverts with {XrayNotRecorder} unless the caller is a Recorder or a Doctor.
    modifier onlyRecorder() {
        address sender = _msgSender();
        if (!hasRole(RECORDER_ROLE, sender) && !hasRole(DOCTOR_ROLE, sender)) {
            revert XrayNotRecorder(sender);
        }
        _;
    }

    /// @inheritdoc IXray
    function setPermission(address account, string calldata name, UserType userType, bool enabled) external {
        bytes32 role = _roleOf(userType);
        _checkPermissionManager(userType);
        if (account == address(0)) revert XrayZeroValue();
        if (bytes(name).length != 0) _names[account] = name;
        if (enabled) {
            _grantRole(role, account);
        } else {
            _revokeRole(role, account);
        }
        emit PermissionSet(account, name, userType, enabled, _msgSender());
    }

    /// @inheritdoc IXray
    function removePermission(address account) external {
        UserType highest = _highestUserType(account);
        if (highest == UserType.None) revert XrayNoPermission(account);
        // A hospital may dismiss a doctor; anyone holding more needs the admin.
        _checkPermissionManager(highest);
        _revokeRole(HOSPITAL_ROLE, account);
        _revokeRole(DOCTOR_ROLE, account);
        _revokeRole(RECORDER_ROLE, account);
        _revokeRole(AUDITOR_ROLE, account);
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
    ) external onlyRecorder {
        if (patientKey == bytes32(0) || digest == bytes32(0)) revert XrayZeroValue();
        ImageVersion[] storage versions = _versions[recordKey];
        uint256 count = versions.length;
        if (count == 0) revert XrayUnknownRecord(recordKey);
        if (_retirements[recordKey].retiredAt != 0) revert XrayRecordRetired(recordKey);
        bytes32 previousDigest = versions[count - 1].digest;
        if (previousDigest == digest) revert XrayUnchangedDigest(recordKey, digest);
        uint32 version = _pushVersion(recordKey, patientKey, digest, pixelDigest, bodyPart, modality);
        emit ImageSuperseded(recordKey, patientKey, _msgSender(), version, previousDigest, digest, pixelDigest);
    }

    /// @inheritdoc IXray
    function recordBatch(bytes32 root, uint32 count) external onlyRecorder returns (uint256 batchId) {
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
        emit BatchAnchored(batchId, root, _msgSender(), count);
    }

    /// @inheritdoc IXray
    function retireImage(bytes32 recordKey, string calldata reason) external {
        _checkCustodian();
        if (_versions[recordKey].length == 0) revert XrayUnknownRecord(recordKey);
        _retire(recordKey, reason);
    }

    /// @inheritdoc IXray
    function retireBatchedImage(
        bytes32 recordKey,
        bytes32 patientKey,
        bytes32 digest,
        bytes32 pixelDigest,
        uint256 batchId,
        uint256 index,
        bytes32[] calldata proof,
        string calldata reason
    ) external {
        _checkCustodian();
        if (batchId == 0 || batchId > _batches.length) revert XrayUnknownBatch(batchId);
        Batch storage batch = _batches[batchId - 1];
        bytes32 leaf = sha256(abi.encodePacked(bytes1(0x00), recordKey, patientKey, digest, pixelDigest));
        if (!_included(leaf, index, batch.count, proof, batch.root)) revert XrayNotInBatch(recordKey, batchId);
        _retire(recordKey, reason);
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

    /// @dev Revert unless the caller is a custodian (admin or Hospital): they retire images.
    function _checkCustodian() private view {
        address sender = _msgSender();
        if (!hasRole(DEFAULT_ADMIN_ROLE, sender) && !hasRole(HOSPITAL_ROLE, sender)) {
            revert XrayNotCustodian(sender);
        }
    }

    /// @dev Mark `recordKey` retired by the caller; the record (or batch) stays.
    function _retire(bytes32 recordKey, string calldata reason) private {
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

    /// @dev The admin manages every permission; a Hospital manages Doctors only.
    function _checkPermissionManager(UserType userType) private view {
        address sender = _msgSender();
        if (hasRole(DEFAULT_ADMIN_ROLE, sender)) return;
        if (userType == UserType.Doctor && hasRole(HOSPITAL_ROLE, sender)) return;
        revert XrayNotPermissionManager(sender, userType);
    }
}
